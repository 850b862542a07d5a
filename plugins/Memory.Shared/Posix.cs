using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Native;

namespace Vism.Memory.Shared;

/// <summary>The file system calls the memory plugins need beyond Vism.Native: open with
/// O_TMPFILE / O_NOFOLLOW, renameat2(RENAME_NOREPLACE), statfs, fallocate retried on EINTR, and
/// ftruncate / mmap returning their errno (read right after the call, never a later one's).</summary>
internal static unsafe partial class Posix
{
    public const int O_RDONLY = 0;
    public const int O_RDWR = 2;
    public const int O_CREAT = 0x40;
    public const int O_EXCL = 0x80;
    public const int O_CLOEXEC = 0x80000;
    private const int __O_TMPFILE = 0x400000;

    // The only flags whose values differ between x86-64 and arm64 (asm-generic vs arm64 fcntl.h).
    public static readonly int O_DIRECTORY = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x4000 : 0x10000;
    public static readonly int O_NOFOLLOW = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x8000 : 0x20000;
    public static int O_TMPFILE => __O_TMPFILE | O_DIRECTORY;

    private const int AT_FDCWD = -100;
    private const uint RENAME_NOREPLACE = 1;

    /// <summary>statfs f_type of hugetlbfs.</summary>
    public const long HugetlbfsMagic = 0x958458f6;

    /// <summary>statfs f_type of tmpfs.</summary>
    public const long TmpfsMagic = 0x01021994;

    /// <summary>statfs f_flags bit of a read-only mount.</summary>
    public const long ST_RDONLY = 1;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "renameat2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int renameat2(int olddirfd, string oldpath, int newdirfd, string newpath, uint flags);

    [LibraryImport("libc", EntryPoint = "statfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statfs(string path, StatFs* buf);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    private static partial int ftruncate(int fd, long length);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);

    private const int PROT_READ = 1;
    private const int PROT_WRITE = 2;
    private const int MAP_SHARED = 1;

    /// <summary>struct statfs on 64-bit Linux (x86-64 and arm64 share it).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct StatFs
    {
        public long Type;
        public long BlockSize;
        public ulong Blocks;
        public ulong BlocksFree;
        public ulong BlocksAvailable;
        public ulong Files;
        public ulong FilesFree;
        public long FsId;
        public long NameLength;
        public long FragmentSize;
        public long Flags;
        private fixed long _spare[4];
    }

    /// <summary>Opens (or creates) <paramref name="path"/>; the result owns the descriptor.</summary>
    /// <returns>The handle, or null with <paramref name="errno"/> set.</returns>
    public static SafeFileHandle? TryOpen(string path, int flags, uint mode, out Errno errno)
    {
        int fd = open(path, flags | O_CLOEXEC, mode);
        if (fd < 0)
        {
            errno = NativeConvert.ToErrno(Marshal.GetLastPInvokeError());
            return null;
        }
        errno = 0;
        return Fd.Own(fd);
    }

    /// <summary>Renames <paramref name="from"/> to <paramref name="to"/>, failing with EEXIST instead of replacing.</summary>
    /// <returns>0 on success, otherwise the errno.</returns>
    public static Errno RenameNoReplace(string from, string to) =>
        renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0 ? 0 : NativeConvert.ToErrno(Marshal.GetLastPInvokeError());

    /// <summary>statfs of the file system holding <paramref name="path"/>.</summary>
    public static bool TryStatFs(string path, out StatFs result)
    {
        StatFs buf;
        if (statfs(path, &buf) != 0)
        {
            result = default;
            return false;
        }
        result = buf;
        return true;
    }

    /// <summary>Claims [0, length) of the file with fallocate (mode 0, extending the size), retrying
    /// when a signal interrupts it (shmem and hugetlbfs give up with EINTR on a pending signal, and
    /// the .NET runtime uses signals).</summary>
    /// <returns>null on success, otherwise the errno.</returns>
    public static Errno? Claim(SafeFileHandle handle, ulong length)
    {
        for (int attempt = 0; ; attempt++)
        {
            Errno? e = MemFd.TryAllocate(handle, 0, length);
            if (e != Errno.EINTR || attempt >= 100) return e;
        }
    }

    /// <summary>Sets the file's size.</summary>
    /// <returns>null on success, otherwise the errno.</returns>
    public static Errno? Truncate(SafeFileHandle handle, ulong length)
    {
        if (length > long.MaxValue) return Errno.EINVAL;
        return ftruncate(Fd.Raw(handle), (long)length) == 0 ? null : LastError;
    }

    /// <summary>Maps [0, <paramref name="length"/>) of the file shared and read-write, and unmaps it
    /// again at once, touching nothing: what a mapping does to the file (for hugetlbfs: reserve its
    /// huge pages) without keeping the mapping.</summary>
    /// <returns>null on success, otherwise the errno of mmap.</returns>
    public static Errno? MapOnce(SafeFileHandle handle, ulong length)
    {
        if (length == 0 || length > (ulong)nint.MaxValue) return Errno.EINVAL;
        nint p = mmap(0, (nuint)length, PROT_READ | PROT_WRITE, MAP_SHARED, Fd.Raw(handle), 0);
        if (p == -1) return LastError;
        munmap(p, (nuint)length);
        return null;
    }

    /// <summary>The extended attribute a persistent region's file records its length in. A peer
    /// holding a descriptor of the file can resize it but not set this (that needs write access to
    /// the inode: vism's own files, mode 0600), so recovery can tell a tampered file.</summary>
    public const string LengthAttribute = "user.vism.length";

    [LibraryImport("libc", EntryPoint = "fsetxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int fsetxattr(int fd, string name, byte* value, nuint size, int flags);

    [LibraryImport("libc", EntryPoint = "fgetxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint fgetxattr(int fd, string name, byte* value, nuint size);

    /// <summary>Records <paramref name="length"/> as the file's region length (<see cref="LengthAttribute"/>).</summary>
    /// <returns>null on success, otherwise the errno.</returns>
    public static Errno? RecordLength(SafeFileHandle handle, ulong length)
    {
        byte* b = stackalloc byte[8];
        *(ulong*)b = length;
        return fsetxattr(Fd.Raw(handle), LengthAttribute, b, 8, 0) == 0 ? null : LastError;
    }

    /// <summary>The region length recorded with <see cref="RecordLength"/>, or null (with the errno) when there is none.</summary>
    public static ulong? RecordedLength(SafeFileHandle handle, out Errno errno)
    {
        byte* b = stackalloc byte[8];
        nint n = fgetxattr(Fd.Raw(handle), LengthAttribute, b, 8);
        errno = n == 8 ? 0 : n < 0 ? LastError : Errno.EINVAL;
        return n == 8 ? *(ulong*)b : null;
    }

    /// <summary>fsync, returning the errno instead of throwing.</summary>
    public static Errno Sync(SafeFileHandle handle) =>
        Syscall.fsync(Fd.Raw(handle)) == 0 ? 0 : Stdlib.GetLastError();

    /// <summary>fsync of a directory, so a rename or unlink in it is durable.</summary>
    public static Errno SyncDirectory(string directory)
    {
        using SafeFileHandle? dir = TryOpen(directory, O_RDONLY | O_DIRECTORY, 0, out Errno e);
        return dir is null ? e : Sync(dir);
    }

    /// <summary>The errno of the last call made through this class.</summary>
    public static Errno LastError => NativeConvert.ToErrno(Marshal.GetLastPInvokeError());

    public static uint EffectiveUserId => Syscall.geteuid();

    public static string Describe(Errno errno) => $"{errno} ({PosixException.Describe(errno)})";
}
