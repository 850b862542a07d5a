using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace Vism.Memory.Shared;

/// <summary>
/// Creates region files in a directory (tmpfs, a disk, a hugetlbfs mount). A region that does not
/// persist gets an unnamed file (O_TMPFILE; on a file system without it, a temporary name that is
/// removed at once), so nothing is ever left in the directory, not even after a crash. A persistent
/// region gets a temporary name, and its final name once all of it is claimed.
/// </summary>
internal sealed class DirectoryFiles(string directory, RegionNames names, bool persist)
{
    private volatile bool _noTmpFile;

    public string Directory => directory;

    public RegionNames Names => names;

    public PendingFile? Create(ulong token, out string? failure)
    {
        Errno e;
        if (!persist && !_noTmpFile)
        {
            SafeFileHandle? anonymous = Posix.TryOpen(directory, Posix.O_RDWR | Posix.O_TMPFILE, 0b110_000_000, out e);
            if (anonymous is not null)
            {
                failure = null;
                return new PendingFile(anonymous);
            }
            if (e is not (Errno.EOPNOTSUPP or Errno.EISDIR or Errno.EINVAL))
            {
                failure = $"cannot create a file in {directory}: {Posix.Describe(e)}";
                return null;
            }
            _noTmpFile = true;
        }

        string temp = Path.Combine(directory, names.Temporary());
        SafeFileHandle? handle = Posix.TryOpen(temp, Posix.O_RDWR | Posix.O_CREAT | Posix.O_EXCL | Posix.O_NOFOLLOW, 0b110_000_000, out e);
        if (handle is null)
        {
            failure = $"cannot create {temp}: {Posix.Describe(e)}";
            return null;
        }
        failure = null;
        if (persist)
            return new PendingFile(handle, temp, Path.Combine(directory, names.Region(token)));
        Syscall.unlink(temp);
        return new PendingFile(handle);
    }
}
