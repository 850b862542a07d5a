using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace Vism.Native;

/// <summary>Anonymous shared memory files (memfd_create), optionally backed by huge pages, and
/// the fallocate operations vism uses to claim and return their pages: Vism.PluginKit's (the
/// implementation plugins share), with failures as <see cref="PosixException"/>.</summary>
public static class MemFd
{
    /// <summary>Creates a memfd of <paramref name="size"/> bytes (close-on-exec).</summary>
    /// <param name="name">Name shown in /proc/PID/fd (debugging only).</param>
    /// <param name="size">Initial size (ftruncate); 0 leaves it empty.</param>
    /// <param name="hugePageSize">0 for normal pages, or 2 MiB / 1 GiB for MFD_HUGETLB.</param>
    public static SafeFileHandle Create(string name, ulong size, ulong hugePageSize = 0) =>
        Posix(() => PluginKit.MemFd.Create(name, size, hugePageSize));

    /// <summary>Sets the file size.</summary>
    public static void Truncate(SafeFileHandle handle, ulong size) =>
        Posix(() => { PluginKit.MemFd.Truncate(handle, size); return true; });

    /// <summary>Claims the pages of [offset, offset+length) now (fallocate mode 0), so that running
    /// out shows as ENOSPC/ENOMEM here instead of SIGBUS on first touch.</summary>
    /// <returns>null on success, otherwise the errno.</returns>
    public static Errno? TryAllocate(SafeFileHandle handle, ulong offset, ulong length, bool keepSize = false)
    {
        int errno = PluginKit.MemFd.Fallocate(handle, keepSize ? LibC.FALLOC_FL_KEEP_SIZE : 0, offset, length);
        return errno == 0 ? null : NativeConvert.ToErrno(errno);
    }

    /// <summary>Returns the pages of [offset, offset+length) to the system (hole punch); the range
    /// then reads as zeros.</summary>
    public static void PunchHole(SafeFileHandle handle, ulong offset, ulong length)
    {
        if (offset > long.MaxValue || length > long.MaxValue - offset)
            throw new ArgumentOutOfRangeException(nameof(length));
        Posix(() => { PluginKit.MemFd.PunchHole(handle, offset, length); return true; });
    }

    /// <summary>Runs a Vism.PluginKit call, reporting its failure as the <see cref="PosixException"/> vism's callers catch.</summary>
    internal static T Posix<T>(Func<T> call)
    {
        try
        {
            return call();
        }
        catch (PluginKit.NativeCallException ex)
        {
            throw new PosixException(ex.Operation, NativeConvert.ToErrno(ex.Errno));
        }
    }
}
