//! The durable model: what a disk would still hold after a power loss.
//!
//! Every file, directory, symlink and socket that the mount has seen is an
//! *object*. The backing directory always holds the live state (what the
//! programs on the mount see); beside it, this module keeps what is
//! durable:
//!
//! - a file's durable bytes live in the shadow directory as `<object id>`,
//!   updated from the live file only by `fsync`/`fdatasync` of that file
//!   (only the ranges written since the last sync are copied);
//! - a directory's durable entries (name → object) are kept in memory and
//!   change only when a pending name change (create, mkdir, unlink, rmdir,
//!   rename) is applied: in `strict` mode by an `fsync` of the directory
//!   concerned, in `journal` mode by any `fsync` at all (a single ordered
//!   metadata journal, roughly ext4's `data=ordered`).
//!
//! A power loss rebuilds the backing directory from the durable entries
//! reachable from the root and the durable bytes of each file. Nothing
//! else counts: `close` (FUSE's `flush`) and `sync_file_range` (which
//! reaches FUSE as nothing) are not durability.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An object's number; it is also its FUSE inode number (the root is 1).
pub type ObjectId = u64;

pub const ROOT: ObjectId = 1;

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    File,
    Dir,
    Symlink(PathBuf),
    Socket,
}

/// How the syncs of one object were asked for, for the report.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub fsync: u64,
    pub fdatasync: u64,
    pub fsyncdir: u64,
    pub flush: u64,
    pub writes: u64,
    pub bytes: u64,
}

impl Counts {
    pub fn any(&self) -> bool {
        self.fsync + self.fdatasync + self.fsyncdir + self.flush + self.writes > 0
    }
}

/// An unsynced change to a file's bytes, kept in order for torn writes.
#[derive(Clone, Debug)]
pub enum Change {
    Write(u64, Vec<u8>),
    Truncate(u64),
}

#[derive(Debug)]
pub struct Object {
    pub kind: Kind,
    pub mode: u32,
    /// Where the object is now in the backing directory (relative to it);
    /// `None` once its last name is gone.
    pub live_path: Option<PathBuf>,
    /// The last path it had, for reports.
    pub last_path: PathBuf,
    /// Byte ranges written since the last sync.
    pub dirty: Vec<(u64, u64)>,
    /// The shortest length the file was truncated to since the last sync.
    pub truncated_to: Option<u64>,
    /// The unsynced changes, in order (only kept in torn-write mode).
    pub journal: Vec<Change>,
    /// A directory's durable entries.
    pub entries: BTreeMap<OsString, ObjectId>,
    pub counts: Counts,
}

impl Object {
    fn new(kind: Kind, mode: u32, path: PathBuf) -> Object {
        Object {
            kind,
            mode,
            live_path: Some(path.clone()),
            last_path: path,
            dirty: Vec::new(),
            truncated_to: None,
            journal: Vec::new(),
            entries: BTreeMap::new(),
            counts: Counts::default(),
        }
    }
}

/// A name change not yet durable.
#[derive(Clone, Debug)]
pub enum NameChange {
    Link {
        dir: ObjectId,
        name: OsString,
        object: ObjectId,
    },
    Unlink {
        dir: ObjectId,
        name: OsString,
        object: ObjectId,
    },
    /// Durable as a whole (both names at once) when either directory is
    /// synced, as on a journaling file system.
    Rename {
        from_dir: ObjectId,
        from_name: OsString,
        to_dir: ObjectId,
        to_name: OsString,
        object: ObjectId,
    },
}

impl NameChange {
    fn touches_dir(&self, id: ObjectId) -> bool {
        match self {
            NameChange::Link { dir, .. } | NameChange::Unlink { dir, .. } => *dir == id,
            NameChange::Rename {
                from_dir, to_dir, ..
            } => *from_dir == id || *to_dir == id,
        }
    }

    fn object(&self) -> ObjectId {
        match self {
            NameChange::Link { object, .. }
            | NameChange::Unlink { object, .. }
            | NameChange::Rename { object, .. } => *object,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DirMode {
    /// A name change is durable once its directory is fsynced.
    Strict,
    /// Any fsync makes every earlier name change durable.
    Journal,
}

/// splitmix64: a small seeded generator for torn writes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next()
        } else {
            self.next() % (max + 1)
        }
    }
}

pub struct Durable {
    pub backing: PathBuf,
    shadow: PathBuf,
    pub objects: HashMap<ObjectId, Object>,
    /// Backing inode number → object, for the objects that still have a name.
    pub by_backing_inode: HashMap<u64, ObjectId>,
    pending: Vec<NameChange>,
    next_id: ObjectId,
    /// Set by a power cut: nothing becomes durable any more.
    pub cut: bool,
    pub dir_mode: DirMode,
    pub torn: Option<Rng>,
    /// `LOSSYFS_TRACE=FILE`: every name change and sync is appended there,
    /// to find which operation's loss a program did not survive.
    trace: Option<File>,
}

impl Durable {
    /// Takes everything in `backing` as durable (the state after the last
    /// power-up) and copies the files' bytes into `shadow`.
    pub fn baseline(
        backing: &Path,
        shadow: &Path,
        dir_mode: DirMode,
        torn: Option<Rng>,
    ) -> io::Result<Durable> {
        if shadow.exists() {
            fs::remove_dir_all(shadow)?;
        }
        fs::create_dir_all(shadow)?;
        let mut durable = Durable {
            backing: backing.to_path_buf(),
            shadow: shadow.to_path_buf(),
            objects: HashMap::new(),
            by_backing_inode: HashMap::new(),
            pending: Vec::new(),
            next_id: ROOT,
            cut: false,
            dir_mode,
            torn,
            trace: None,
        };
        if let Some(path) = std::env::var_os("LOSSYFS_TRACE") {
            durable.trace = Some(OpenOptions::new().create(true).append(true).open(path)?);
        }
        let root = fs::symlink_metadata(backing)?;
        let id = durable.known(&root, Kind::Dir, PathBuf::new());
        debug_assert_eq!(id, ROOT);
        durable.scan(ROOT, Path::new(""))?;
        Ok(durable)
    }

    fn scan(&mut self, dir: ObjectId, relative: &Path) -> io::Result<()> {
        for entry in fs::read_dir(self.backing.join(relative))? {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            let metadata = entry.metadata()?;
            let kind = kind_of(&self.backing.join(&path), &metadata)?;
            let id = self.known(&metadata, kind.clone(), path.clone());
            self.object_mut(dir).entries.insert(entry.file_name(), id);
            match kind {
                Kind::File => {
                    fs::copy(self.backing.join(&path), self.shadow_path(id))?;
                }
                Kind::Dir => self.scan(id, &path)?,
                Kind::Symlink(_) | Kind::Socket => {}
            }
        }
        Ok(())
    }

    /// The object of a backing file, made on first sight.
    pub fn known(&mut self, metadata: &fs::Metadata, kind: Kind, path: PathBuf) -> ObjectId {
        use std::os::unix::fs::MetadataExt;
        if let Some(&id) = self.by_backing_inode.get(&metadata.ino()) {
            let object = self.object_mut(id);
            if std::mem::discriminant(&object.kind) == std::mem::discriminant(&kind) {
                object.live_path = Some(path.clone());
                object.last_path = path;
                return id;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.objects
            .insert(id, Object::new(kind, metadata.mode() & 0o7777, path));
        self.by_backing_inode.insert(metadata.ino(), id);
        id
    }

    pub fn object(&self, id: ObjectId) -> Option<&Object> {
        self.objects.get(&id)
    }

    pub fn object_mut(&mut self, id: ObjectId) -> &mut Object {
        self.objects.get_mut(&id).expect("known object")
    }

    fn shadow_path(&self, id: ObjectId) -> PathBuf {
        self.shadow.join(id.to_string())
    }

    /// Appends a line to the trace, if one was asked for.
    pub fn note(&mut self, line: impl FnOnce(&Durable) -> String) {
        if self.trace.is_some() {
            let line = format!("{}{}\n", if self.cut { "(cut) " } else { "" }, line(self));
            if let Some(trace) = &mut self.trace {
                let _ = io::Write::write_all(trace, line.as_bytes());
            }
        }
    }

    fn name_of(&self, dir: ObjectId, name: &OsString) -> String {
        self.objects
            .get(&dir)
            .map_or(PathBuf::from("?"), |d| d.last_path.clone())
            .join(name)
            .display()
            .to_string()
    }

    /// Traces the name changes a power loss now drops.
    pub fn note_dropped(&mut self) {
        let lines: Vec<String> = self
            .pending
            .iter()
            .map(|change| format!("crash drops {change:?}"))
            .collect();
        self.note(|_| "crash".to_string());
        for line in lines {
            self.note(|_| line);
        }
    }

    /// A name change happened live; it waits for a sync.
    pub fn changed_name(&mut self, change: NameChange) {
        self.note(|d| match &change {
            NameChange::Link { dir, name, object } => {
                format!("link {} (object {object})", d.name_of(*dir, name))
            }
            NameChange::Unlink { dir, name, object } => {
                format!("unlink {} (object {object})", d.name_of(*dir, name))
            }
            NameChange::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                object,
            } => format!(
                "rename {} -> {} (object {object})",
                d.name_of(*from_dir, from_name),
                d.name_of(*to_dir, to_name)
            ),
        });
        self.pending.push(change);
    }

    pub fn wrote(&mut self, id: ObjectId, offset: u64, data: &[u8]) {
        // After a power cut nothing more reaches the disk, not even torn:
        // a write the program made after the cut must not be in the prefix
        // a tear keeps (it could carry a record that only the lost sync of
        // another file made safe to write).
        let keep_journal = self.torn.is_some() && !self.cut;
        let object = self.object_mut(id);
        object.counts.writes += 1;
        object.counts.bytes += data.len() as u64;
        object.dirty.push((offset, offset + data.len() as u64));
        if keep_journal {
            object.journal.push(Change::Write(offset, data.to_vec()));
        }
    }

    pub fn truncated(&mut self, id: ObjectId, length: u64) {
        let keep_journal = self.torn.is_some() && !self.cut;
        let object = self.object_mut(id);
        object.truncated_to = Some(object.truncated_to.map_or(length, |t| t.min(length)));
        if keep_journal {
            object.journal.push(Change::Truncate(length));
        }
    }

    /// `fsync`/`fdatasync` of a file: its bytes as they are now are durable
    /// (and, in journal mode, every earlier name change).
    pub fn sync_file(&mut self, id: ObjectId, live: &File) -> io::Result<()> {
        self.note(|d| format!("sync file /{}", d.objects[&id].last_path.display()));
        if self.cut {
            return Ok(());
        }
        let shadow = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.shadow_path(id))?;
        let length = live.metadata()?.len();
        let object = self.object_mut(id);
        if let Some(t) = object.truncated_to.take() {
            shadow.set_len(t)?;
        }
        shadow.set_len(length)?;
        let mut buffer = Vec::new();
        for (start, end) in merge(std::mem::take(&mut object.dirty)) {
            let end = end.min(length);
            if start >= end {
                continue;
            }
            buffer.resize((end - start) as usize, 0);
            live.read_exact_at(&mut buffer, start)?;
            shadow.write_all_at(&buffer, start)?;
        }
        object.journal.clear();
        if self.dir_mode == DirMode::Journal {
            self.apply_all();
        }
        Ok(())
    }

    /// `fsync` of a directory: its pending name changes are durable, with
    /// the earlier changes of the same objects they depend on.
    pub fn sync_dir(&mut self, dir: ObjectId) {
        self.note(|d| {
            let pending = d.pending.iter().filter(|c| c.touches_dir(dir)).count();
            format!(
                "sync dir /{} ({pending} pending changes in it)",
                d.objects[&dir].last_path.display()
            )
        });
        if self.cut {
            return;
        }
        if self.dir_mode == DirMode::Journal {
            self.apply_all();
            return;
        }
        let mut chosen: BTreeSet<usize> = BTreeSet::new();
        let mut objects: BTreeSet<ObjectId> = BTreeSet::new();
        for (i, change) in self.pending.iter().enumerate() {
            if change.touches_dir(dir) {
                chosen.insert(i);
                objects.insert(change.object());
            }
        }
        let last = match chosen.iter().next_back() {
            Some(&last) => last,
            None => return,
        };
        // Earlier changes of the same objects come along (a file created in
        // one directory and renamed into this one).
        for (i, change) in self.pending.iter().enumerate().take(last) {
            if objects.contains(&change.object()) {
                chosen.insert(i);
            }
        }
        let mut kept = Vec::new();
        for (i, change) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            if chosen.contains(&i) {
                self.apply(&change);
            } else {
                kept.push(change);
            }
        }
        self.pending = kept;
    }

    fn apply_all(&mut self) {
        for change in std::mem::take(&mut self.pending) {
            self.apply(&change);
        }
    }

    fn apply(&mut self, change: &NameChange) {
        match change {
            NameChange::Link { dir, name, object } => {
                self.object_mut(*dir).entries.insert(name.clone(), *object);
            }
            NameChange::Unlink { dir, name, object } => {
                let entries = &mut self.object_mut(*dir).entries;
                if entries.get(name) == Some(object) {
                    entries.remove(name);
                }
            }
            NameChange::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                object,
            } => {
                let entries = &mut self.object_mut(*from_dir).entries;
                if entries.get(from_name) == Some(object) {
                    entries.remove(from_name);
                }
                self.object_mut(*to_dir)
                    .entries
                    .insert(to_name.clone(), *object);
            }
        }
    }

    /// What a power loss now would drop, for the report.
    pub fn unsynced(&self) -> (usize, u64, usize) {
        let mut files = 0;
        let mut bytes = 0;
        for object in self.objects.values() {
            if !object.dirty.is_empty() || object.truncated_to.is_some() {
                files += 1;
                bytes += object.dirty.iter().map(|(s, e)| e - s).sum::<u64>();
            }
        }
        (files, bytes, self.pending.len())
    }

    /// In torn-write mode, a random prefix of each file's unsynced changes
    /// reaches the disk, the last of them cut at a random byte. Returns one
    /// line per file touched.
    pub fn tear(&mut self) -> io::Result<Vec<String>> {
        let Some(mut rng) = self.torn.take() else {
            return Ok(Vec::new());
        };
        let mut lines = Vec::new();
        let mut ids: Vec<ObjectId> = self.objects.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let journal = std::mem::take(&mut self.object_mut(id).journal);
            if journal.is_empty() {
                continue;
            }
            let kept = rng.up_to(journal.len() as u64) as usize;
            let shadow = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.shadow_path(id))?;
            let mut torn_bytes = 0;
            for (i, change) in journal.iter().enumerate().take(kept + 1) {
                match change {
                    Change::Write(offset, data) => {
                        let length = if i == kept {
                            rng.up_to(data.len() as u64) as usize
                        } else {
                            data.len()
                        };
                        shadow.write_all_at(&data[..length], *offset)?;
                        if i == kept {
                            torn_bytes = length;
                        }
                    }
                    Change::Truncate(length) if i < kept => shadow.set_len(*length)?,
                    Change::Truncate(_) => {}
                }
            }
            lines.push(format!(
                "torn {} kept {kept} of {} unsynced changes and {torn_bytes} bytes of the next",
                self.objects[&id].last_path.display(),
                journal.len()
            ));
        }
        Ok(lines)
    }

    /// The power loss itself: the backing directory is emptied and rebuilt
    /// from what is durable. The mount must be gone.
    pub fn materialize(&mut self) -> io::Result<()> {
        for entry in fs::read_dir(&self.backing)? {
            let path = entry?.path();
            if fs::symlink_metadata(&path)?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
        let mut placed: HashMap<ObjectId, PathBuf> = HashMap::new();
        placed.insert(ROOT, self.backing.clone());
        self.place_entries(ROOT, &self.backing.clone(), &mut placed)
    }

    fn place_entries(
        &self,
        dir: ObjectId,
        path: &Path,
        placed: &mut HashMap<ObjectId, PathBuf>,
    ) -> io::Result<()> {
        for (name, &id) in &self.objects[&dir].entries {
            let target = path.join(name);
            let object = &self.objects[&id];
            if let Some(first) = placed.get(&id) {
                if object.kind != Kind::Dir {
                    fs::hard_link(first, &target)?;
                }
                continue;
            }
            placed.insert(id, target.clone());
            match &object.kind {
                Kind::Dir => {
                    fs::create_dir(&target)?;
                    self.place_entries(id, &target, placed)?;
                }
                Kind::File => {
                    let shadow = self.shadow_path(id);
                    if shadow.exists() {
                        fs::rename(&shadow, &target)?;
                    } else {
                        // The name is durable, its bytes never were.
                        File::create(&target)?;
                    }
                }
                Kind::Symlink(to) => std::os::unix::fs::symlink(to, &target)?,
                Kind::Socket => {
                    drop(std::os::unix::net::UnixListener::bind(&target)?);
                }
            }
            if !matches!(object.kind, Kind::Symlink(_)) {
                fs::set_permissions(&target, fs::Permissions::from_mode(object.mode))?;
            }
        }
        Ok(())
    }

    pub fn remove_shadow(&self) -> io::Result<()> {
        fs::remove_dir_all(&self.shadow)
    }
}

pub fn kind_of(path: &Path, metadata: &fs::Metadata) -> io::Result<Kind> {
    use std::os::unix::fs::FileTypeExt;
    let file_type = metadata.file_type();
    Ok(if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_symlink() {
        Kind::Symlink(fs::read_link(path)?)
    } else if file_type.is_socket() {
        Kind::Socket
    } else {
        Kind::File
    })
}

/// Sorted, overlapping or touching ranges merged.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backing folder holding one empty file, taken as durable, with
    /// torn writes on (seeded).
    fn one_file(torn_seed: u64) -> (PathBuf, Durable, ObjectId) {
        let root =
            std::env::temp_dir().join(format!("lossyfs-test-{}-{torn_seed}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let backing = root.join("backing");
        fs::create_dir_all(&backing).unwrap();
        File::create(backing.join("f")).unwrap();
        let mut durable = Durable::baseline(
            &backing,
            &root.join("shadow"),
            DirMode::Strict,
            Some(Rng::new(torn_seed)),
        )
        .unwrap();
        let metadata = fs::symlink_metadata(backing.join("f")).unwrap();
        let id = durable.known(&metadata, Kind::File, PathBuf::from("f"));
        (root, durable, id)
    }

    #[test]
    fn nothing_written_after_a_cut_survives_a_tear() {
        // Whatever prefix the tear keeps, the bytes written after the cut
        // are never in it.
        for seed in 0..64 {
            let (root, mut durable, id) = one_file(seed);
            let live = root.join("backing/f");
            fs::write(&live, b"before").unwrap();
            durable.wrote(id, 0, b"before");
            durable.cut = true;
            fs::write(&live, b"beforeAFTER").unwrap();
            durable.wrote(id, 6, b"AFTER");
            durable.truncated(id, 0);
            durable.tear().unwrap();
            durable.materialize().unwrap();
            let kept = fs::read(&live).unwrap();
            assert!(
                b"before".starts_with(&kept),
                "seed {seed}: the disk holds {:?}",
                String::from_utf8_lossy(&kept)
            );
            fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        assert_eq!(
            merge(vec![(10, 20), (0, 5), (5, 7), (15, 30), (40, 41)]),
            vec![(0, 7), (10, 30), (40, 41)]
        );
    }
}
