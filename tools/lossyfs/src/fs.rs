//! The FUSE side: every operation passes through to the backing directory
//! and tells the durable model what changed (`durable.rs`).
//!
//! One thread serves the mount, and one lock guards the model, so the
//! order of operations is the order the model sees.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::durable::{kind_of, Durable, Kind, NameChange, ObjectId};

/// Every change reaches the kernel through this file system, so its
/// caches may be trusted for a while.
const TTL: Duration = Duration::from_secs(1);

struct Handle {
    file: File,
    object: ObjectId,
}

pub struct Inner {
    pub durable: Durable,
    handles: HashMap<u64, Handle>,
    next_handle: u64,
    /// A power cut is armed: after this many more creations, nothing
    /// becomes durable any more.
    pub cut_after_creations: Option<u64>,
    /// Operations answered with ENOSYS, for the report.
    pub unimplemented: BTreeMap<&'static str, u64>,
}

impl Inner {
    pub fn new(durable: Durable) -> Inner {
        Inner {
            durable,
            handles: HashMap::new(),
            next_handle: 1,
            cut_after_creations: None,
            unimplemented: BTreeMap::new(),
        }
    }

    fn live_path(&self, id: ObjectId) -> Result<PathBuf, Errno> {
        let object = self.durable.object(id).ok_or(Errno::ENOENT)?;
        let relative = object.live_path.as_ref().ok_or(Errno::ENOENT)?;
        Ok(self.durable.backing.join(relative))
    }

    fn relative_child(&self, parent: ObjectId, name: &OsStr) -> Result<PathBuf, Errno> {
        let object = self.durable.object(parent).ok_or(Errno::ENOENT)?;
        let relative = object.live_path.as_ref().ok_or(Errno::ENOENT)?;
        Ok(relative.join(name))
    }

    /// The object at a backing path, with its attributes.
    fn entry(&mut self, relative: &Path) -> Result<(ObjectId, FileAttr), Errno> {
        let absolute = self.durable.backing.join(relative);
        let metadata = fs::symlink_metadata(&absolute).map_err(errno)?;
        let kind = kind_of(&absolute, &metadata).map_err(errno)?;
        let id = self.durable.known(&metadata, kind, relative.to_path_buf());
        Ok((id, attributes(id, &metadata)))
    }

    fn handle(&mut self, file: File, object: ObjectId) -> FileHandle {
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(fh, Handle { file, object });
        FileHandle(fh)
    }

    /// A file or directory was created: counts down an armed power cut.
    fn created(&mut self, relative: &Path) {
        if let Some(left) = self.cut_after_creations {
            if left <= 1 {
                self.durable.cut = true;
                self.cut_after_creations = None;
                println!("lossyfs: cut after creating {}", relative.display());
            } else {
                self.cut_after_creations = Some(left - 1);
            }
        }
    }

    /// Before a name goes away: if it was the object's last name, the
    /// object is no longer live (its backing inode may be reused).
    fn losing_name(&mut self, relative: &Path) -> Result<ObjectId, Errno> {
        let absolute = self.durable.backing.join(relative);
        let metadata = fs::symlink_metadata(&absolute).map_err(errno)?;
        let kind = kind_of(&absolute, &metadata).map_err(errno)?;
        let id = self.durable.known(&metadata, kind, relative.to_path_buf());
        if metadata.is_dir() || metadata.nlink() <= 1 {
            self.durable.by_backing_inode.remove(&metadata.ino());
            self.durable.object_mut(id).live_path = None;
        }
        Ok(id)
    }

    fn unimplemented(&mut self, name: &'static str) {
        *self.unimplemented.entry(name).or_default() += 1;
    }
}

/// The model, and how long each file sync waits before it makes anything
/// durable (`--sync-delay`).
pub struct LossyFs(pub Arc<Mutex<Inner>>, pub Duration);

impl LossyFs {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn errno(error: io::Error) -> Errno {
    if error.raw_os_error().is_some() {
        Errno::from(error)
    } else {
        Errno::EIO
    }
}

fn time(seconds: i64, nanos: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::new(seconds as u64, nanos as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attributes(id: ObjectId, metadata: &fs::Metadata) -> FileAttr {
    use std::os::unix::fs::FileTypeExt;
    let file_type = metadata.file_type();
    let kind = if file_type.is_dir() {
        FileType::Directory
    } else if file_type.is_symlink() {
        FileType::Symlink
    } else if file_type.is_socket() {
        FileType::Socket
    } else if file_type.is_fifo() {
        FileType::NamedPipe
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(id),
        size: metadata.size(),
        blocks: metadata.blocks(),
        atime: time(metadata.atime(), metadata.atime_nsec()),
        mtime: time(metadata.mtime(), metadata.mtime_nsec()),
        ctime: time(metadata.ctime(), metadata.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (metadata.mode() & 0o7777) as u16,
        nlink: metadata.nlink() as u32,
        uid: metadata.uid(),
        gid: metadata.gid(),
        rdev: metadata.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// Opens the backing file with the access mode only: the kernel has
/// already resolved the path and computed each write's offset (an
/// `O_APPEND` backing file would ignore the offsets of `pwrite`). A file
/// opened for writing is opened for reading too, so that a sync can copy
/// its bytes.
fn open_options(flags: i32) -> OpenOptions {
    let mut options = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY | libc::O_RDWR => options.read(true).write(true),
        _ => options.read(true),
    };
    options
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut inner = self.lock();
        let result = inner
            .relative_child(parent.0, name)
            .and_then(|relative| inner.entry(&relative));
        match result {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let inner = self.lock();
        let metadata = match fh.and_then(|fh| inner.handles.get(&fh.0)) {
            Some(handle) => handle.file.metadata().map_err(errno),
            None => inner
                .live_path(ino.0)
                .and_then(|path| fs::symlink_metadata(path).map_err(errno)),
        };
        match metadata {
            Ok(metadata) => reply.attr(&TTL, &attributes(ino.0, &metadata)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut inner = self.lock();
        let result = (|| -> Result<fs::Metadata, Errno> {
            let path = inner.live_path(ino.0);
            if let Some(mode) = mode {
                fs::set_permissions(path.clone()?, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno)?;
                inner.durable.object_mut(ino.0).mode = mode & 0o7777;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(path.clone()?, uid, gid).map_err(errno)?;
            }
            if let Some(size) = size {
                match fh.and_then(|fh| inner.handles.get(&fh.0)) {
                    Some(handle) => handle.file.set_len(size).map_err(errno)?,
                    None => OpenOptions::new()
                        .write(true)
                        .open(path.clone()?)
                        .and_then(|file| file.set_len(size))
                        .map_err(errno)?,
                }
                inner.durable.truncated(ino.0, size);
            }
            // Times are not kept: nothing here depends on them.
            match fh.and_then(|fh| inner.handles.get(&fh.0)) {
                Some(handle) => handle.file.metadata().map_err(errno),
                None => fs::symlink_metadata(path?).map_err(errno),
            }
        })();
        match result {
            Ok(metadata) => reply.attr(&TTL, &attributes(ino.0, &metadata)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inner = self.lock();
        match inner
            .live_path(ino.0)
            .and_then(|path| fs::read_link(path).map_err(errno))
        {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let mut inner = self.lock();
        let result = (|| {
            let relative = inner.relative_child(parent.0, name)?;
            let absolute = inner.durable.backing.join(&relative);
            match mode & libc::S_IFMT {
                libc::S_IFSOCK => {
                    // Binding makes the socket file; the kernel keeps the
                    // socket itself on the mount's inode.
                    drop(std::os::unix::net::UnixListener::bind(&absolute).map_err(errno)?);
                }
                libc::S_IFREG => {
                    File::create_new(&absolute).map_err(errno)?;
                }
                _ => return Err(Errno::EPERM),
            }
            fs::set_permissions(
                &absolute,
                fs::Permissions::from_mode(mode & !umask & 0o7777),
            )
            .map_err(errno)?;
            let (id, attr) = inner.entry(&relative)?;
            inner.durable.changed_name(NameChange::Link {
                dir: parent.0,
                name: name.to_owned(),
                object: id,
            });
            inner.created(&relative);
            Ok(attr)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut inner = self.lock();
        let result = (|| {
            let relative = inner.relative_child(parent.0, name)?;
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(inner.durable.backing.join(&relative))
                .map_err(errno)?;
            let (id, attr) = inner.entry(&relative)?;
            inner.durable.changed_name(NameChange::Link {
                dir: parent.0,
                name: name.to_owned(),
                object: id,
            });
            inner.created(&relative);
            Ok(attr)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut inner = self.lock();
        let result = (|| {
            let relative = inner.relative_child(parent.0, link_name)?;
            std::os::unix::fs::symlink(target, inner.durable.backing.join(&relative))
                .map_err(errno)?;
            let (id, attr) = inner.entry(&relative)?;
            inner.durable.changed_name(NameChange::Link {
                dir: parent.0,
                name: link_name.to_owned(),
                object: id,
            });
            inner.created(&relative);
            Ok(attr)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            // RENAME_NOREPLACE / RENAME_EXCHANGE are not modelled.
            reply.error(Errno::EINVAL);
            return;
        }
        let mut inner = self.lock();
        let result = (|| {
            let from = inner.relative_child(parent.0, name)?;
            let to = inner.relative_child(newparent.0, newname)?;
            let (id, _) = inner.entry(&from)?;
            let backing = inner.durable.backing.clone();
            if fs::symlink_metadata(backing.join(&to)).is_ok() {
                let replaced = inner.losing_name(&to)?;
                if replaced == id {
                    return Ok(());
                }
            }
            fs::rename(backing.join(&from), backing.join(&to)).map_err(errno)?;
            // The object and everything under it (a directory) move.
            for object in inner.durable.objects.values_mut() {
                if let Some(path) = &object.live_path {
                    if let Ok(rest) = path.strip_prefix(&from) {
                        let moved = if rest.as_os_str().is_empty() {
                            to.clone()
                        } else {
                            to.join(rest)
                        };
                        object.last_path = moved.clone();
                        object.live_path = Some(moved);
                    }
                }
            }
            inner.durable.changed_name(NameChange::Rename {
                from_dir: parent.0,
                from_name: name.to_owned(),
                to_dir: newparent.0,
                to_name: newname.to_owned(),
                object: id,
            });
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut inner = self.lock();
        let result = (|| {
            let path = inner.live_path(ino.0)?;
            let file = open_options(flags.0).open(path).map_err(errno)?;
            if flags.0 & libc::O_TRUNC != 0 {
                file.set_len(0).map_err(errno)?;
                inner.durable.truncated(ino.0, 0);
            }
            Ok(inner.handle(file, ino.0))
        })();
        match result {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut inner = self.lock();
        let result = (|| {
            let relative = inner.relative_child(parent.0, name)?;
            let absolute = inner.durable.backing.join(&relative);
            let existed = fs::symlink_metadata(&absolute).is_ok();
            let mut options = open_options(flags);
            options.mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                options.create_new(true);
            } else {
                options.create(true);
            }
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                // create(2) needs write access to make the file.
                options.write(true);
            }
            let file = options.open(&absolute).map_err(errno)?;
            let (id, attr) = inner.entry(&relative)?;
            if existed {
                if flags & libc::O_TRUNC != 0 {
                    file.set_len(0).map_err(errno)?;
                    inner.durable.truncated(id, 0);
                }
            } else {
                inner.durable.changed_name(NameChange::Link {
                    dir: parent.0,
                    name: name.to_owned(),
                    object: id,
                });
                inner.created(&relative);
            }
            let fh = inner.handle(file, id);
            Ok((attr, fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.lock();
        let Some(handle) = inner.handles.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let mut buffer = vec![0; size as usize];
        let mut filled = 0;
        while filled < buffer.len() {
            match handle
                .file
                .read_at(&mut buffer[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    reply.error(errno(e));
                    return;
                }
            }
        }
        reply.data(&buffer[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut inner = self.lock();
        let Some(handle) = inner.handles.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let object = handle.object;
        match handle.file.write_all_at(data, offset) {
            Ok(()) => {
                inner.durable.wrote(object, offset, data);
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): not durability.
        let mut inner = self.lock();
        if inner.durable.object(ino.0).is_some() {
            inner.durable.object_mut(ino.0).counts.flush += 1;
        }
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.1.is_zero() {
            sync(&mut self.lock(), fh, datasync, reply);
            return;
        }
        // A slow disk: the sync completes later, on its own thread, while
        // the mount goes on serving other calls; a power loss (`cut`,
        // `crash`) may come first, and then it makes nothing durable.
        let inner = self.0.clone();
        let delay = self.1;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let mut guard = inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            sync(&mut guard, fh, datasync, reply);
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut inner = self.lock();
        let result = (|| {
            let object = inner.durable.object(ino.0).ok_or(Errno::ENOENT)?;
            let relative = object.live_path.clone().ok_or(Errno::ENOENT)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            let listing = fs::read_dir(inner.durable.backing.join(&relative)).map_err(errno)?;
            for entry in listing {
                let entry = entry.map_err(errno)?;
                let child = relative.join(entry.file_name());
                if let Ok((id, attr)) = inner.entry(&child) {
                    entries.push((id, attr.kind, entry.file_name()));
                }
            }
            Ok(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (id, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(id), (i + 1) as u64, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut inner = self.lock();
        if inner.durable.object(ino.0).is_none() {
            reply.error(Errno::ENOENT);
            return;
        }
        inner.durable.object_mut(ino.0).counts.fsyncdir += 1;
        inner.durable.sync_dir(ino.0);
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        self.lock().unimplemented("fallocate");
        reply.error(Errno::ENOSYS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Hard links are not modelled (one live path per object).
        self.lock().unimplemented("link");
        reply.error(Errno::EPERM);
    }
}

/// `fsync`/`fdatasync` of an open file.
fn sync(inner: &mut Inner, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
    let Some(handle) = inner.handles.get(&fh.0) else {
        reply.error(Errno::EBADF);
        return;
    };
    let object = handle.object;
    let counts = &mut inner.durable.object_mut(object).counts;
    if datasync {
        counts.fdatasync += 1;
    } else {
        counts.fsync += 1;
    }
    match inner.durable.sync_file(object, &handle.file) {
        Ok(()) => reply.ok(),
        Err(e) => {
            eprintln!("lossyfs: sync of object {object} failed: {e}");
            reply.error(Errno::EIO);
        }
    }
}

impl LossyFs {
    fn remove(&self, parent: INodeNo, name: &OsStr, directory: bool, reply: ReplyEmpty) {
        let mut inner = self.lock();
        let result = (|| {
            let relative = inner.relative_child(parent.0, name)?;
            let absolute = inner.durable.backing.join(&relative);
            let metadata = fs::symlink_metadata(&absolute).map_err(errno)?;
            if directory != metadata.is_dir() {
                return Err(if directory {
                    Errno::ENOTDIR
                } else {
                    Errno::EISDIR
                });
            }
            if directory {
                fs::remove_dir(&absolute).map_err(errno)?;
            }
            // The model looks at the name before it goes (for files, while
            // the link count still counts it).
            let id = if directory {
                let kind = Kind::Dir;
                let id = inner.durable.known(&metadata, kind, relative.clone());
                inner.durable.by_backing_inode.remove(&metadata.ino());
                inner.durable.object_mut(id).live_path = None;
                id
            } else {
                let id = inner.losing_name(&relative)?;
                fs::remove_file(&absolute).map_err(errno)?;
                id
            };
            inner.durable.changed_name(NameChange::Unlink {
                dir: parent.0,
                name: name.to_owned(),
                object: id,
            });
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
