//! Watching files for changes (used by the endpoints file and by certificate rotation).

use std::{
    collections::HashSet,
    ffi::OsString,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher,
    event::{AccessKind, AccessMode},
};

/// How long a burst of file events is left to settle before the callback runs: editors,
/// `kubectl` ConfigMap updates and certificate managers write in several steps.
/// The burst settles when no event came for this long.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(50);

/// How long a file that a writer still holds open (written, not yet closed) is waited for
/// before it is read anyway: a writer that writes in pieces through one descriptor (`cat >`, a
/// program writing as it goes) is read once, when it closes the file, never half-written.
/// (Where the platform reports closes: Linux's inotify. Elsewhere only the debounce applies.)
pub(crate) const MAX_WRITE_WAIT: Duration = Duration::from_secs(2);

/// Follows which files a writer holds open: written (or created) and not yet closed.
fn track(event: &notify::Event, writing: &mut HashSet<PathBuf>) {
    use notify::event::{CreateKind, ModifyKind};
    if !cfg!(any(target_os = "linux", target_os = "android")) {
        return;
    }
    match event.kind {
        EventKind::Modify(ModifyKind::Data(_)) | EventKind::Create(CreateKind::File) => {
            writing.extend(event.paths.iter().cloned());
        }
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Name(_)) => {
            for p in &event.paths {
                writing.remove(p);
            }
        }
        _ => {}
    }
}

/// Watches the directories of `paths` and calls `on_change` (on a dedicated thread) after a
/// burst of changes to any of those files settles. Symlink swaps of Kubernetes volumes
/// (`..data`) count as changes. The watch ends when the returned watcher is dropped, or when
/// `on_change` returns `false`.
pub(crate) fn watch_files(
    paths: &[&Path],
    thread_name: &str,
    mut on_change: impl FnMut() -> bool + Send + 'static,
) -> notify::Result<RecommendedWatcher> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    let mut dirs = HashSet::new();
    let mut names: HashSet<OsString> = HashSet::new();
    // Directories given as such: every file in them counts (their documents are read by
    // extension; the caller filters).
    let mut whole_dirs: Vec<PathBuf> = Vec::new();
    for path in paths {
        if path.is_dir() {
            if dirs.insert(path.to_path_buf()) {
                watcher.watch(path, RecursiveMode::NonRecursive)?;
            }
            whole_dirs.push(path.to_path_buf());
            continue;
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dirs.insert(dir.clone()) {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
        if let Some(n) = path.file_name() {
            names.insert(n.to_owned());
        }
    }
    names.insert(OsString::from("..data"));
    let in_whole_dir = move |p: &Path| {
        p.parent()
            .is_some_and(|d| whole_dirs.iter().any(|w| same_dir(w, d)))
    };
    let relevant = move |event: &notify::Event| {
        let kind_matters = match event.kind {
            // Readers open and close the files; only a closed writer means new content.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        kind_matters
            && event
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.contains(n)) || in_whole_dir(p))
    };
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            while let Ok(event) = rx.recv() {
                let first = match event {
                    Ok(e) if relevant(&e) => e,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "file watch error");
                        continue;
                    }
                };
                let started = Instant::now();
                let bound = started + MAX_WRITE_WAIT;
                let mut writing = HashSet::new();
                track(&first, &mut writing);
                let mut quiet_until = started + DEBOUNCE;
                loop {
                    // Wait for a quiet moment; while a writer still holds a file open, for its
                    // close (up to the bound).
                    let until = if writing.is_empty() {
                        quiet_until
                    } else {
                        bound
                    };
                    match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        Ok(Ok(e)) if relevant(&e) => {
                            track(&e, &mut writing);
                            quiet_until = (Instant::now() + DEBOUNCE).min(bound);
                        }
                        Ok(_) => continue,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                if !writing.is_empty() {
                    tracing::warn!(files = ?writing, waited = ?MAX_WRITE_WAIT,
                        "files still open for writing; reading them anyway");
                }
                if !on_change() {
                    return;
                }
            }
        })
        .map_err(notify::Error::io)?;
    Ok(watcher)
}

/// Whether two paths name one directory (the watcher reports canonical paths).
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}
