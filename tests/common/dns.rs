//! An authoritative DNS server (hickory-server, in-memory zone) on a loopback UDP port, whose
//! records tests change while it runs.

use std::{net::Ipv4Addr, str::FromStr, sync::Arc};

use hickory_proto::rr::{
    LowerName, Name, RData, Record, RecordType, RrKey,
    rdata::{A, SOA, SRV},
};
use hickory_server::{
    Server,
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType},
};
use std::net::SocketAddr;
use tokio::net::UdpSocket;

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    serial: std::sync::atomic::AtomicU32,
    _server: Server<Catalog>,
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

impl TestDns {
    /// Serves zone `origin` (e.g. "mesh.test.") on 127.0.0.1 and a free UDP port.
    pub async fn start(origin: &str) -> Self {
        let origin = name(origin);
        let mut zone =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            name(&format!("ns.{origin}")),
            name(&format!("admin.{origin}")),
            1,
            3600,
            600,
            86400,
            1,
        );
        zone.upsert_mut(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1);
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        Self {
            addr,
            zone,
            serial: 2.into(),
            _server: server,
        }
    }

    fn next_serial(&self) -> u32 {
        self.serial
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// Replaces the A records of `host`.
    pub async fn set_a(&self, host: &str, ips: &[Ipv4Addr], ttl: u32) {
        self.remove(host, RecordType::A).await;
        let serial = self.next_serial();
        for ip in ips {
            let rec = Record::from_rdata(name(host), ttl, RData::A(A(*ip)));
            assert!(self.zone.upsert(rec, serial).await);
        }
    }

    /// Replaces the SRV records of `srv_name`: (priority, weight, port, target).
    pub async fn set_srv(&self, srv_name: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        self.remove(srv_name, RecordType::SRV).await;
        let serial = self.next_serial();
        for (prio, weight, port, target) in records {
            let rdata = RData::SRV(SRV::new(*prio, *weight, *port, name(target)));
            assert!(
                self.zone
                    .upsert(Record::from_rdata(name(srv_name), ttl, rdata), serial)
                    .await
            );
        }
    }

    /// Deletes the records of one type of `host` (queries then get NXDOMAIN once none are left).
    pub async fn remove(&self, host: &str, rtype: RecordType) {
        let key = RrKey::new(LowerName::new(&name(host)), rtype);
        self.zone.records_mut().await.remove(&key);
    }
}
