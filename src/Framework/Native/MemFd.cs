using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace Vism.Native;

/// <summary>Anonymous shared memory files (memfd_create), optionally backed by huge pages, and
/// the fallocate operations vism uses to claim and return their pages.</summary>
public static class MemFd
{
    /// <summary>Creates a memfd of <paramref name="size"/> bytes (close-on-exec).</summary>
    /// <param name="name">Name shown in /proc/PID/fd (debugging only).</param>
    /// <param name="size">Initial size (ftruncate); 0 leaves it empty.</param>
    /// <param name="hugePageSize">0 for normal pages, or 2 MiB / 1 GiB for MFD_HUGETLB.</param>
    public static SafeFileHandle Create(string name, ulong size, ulong hugePageSize = 0)
    {
        uint flags = LibC.MFD_CLOEXEC | LibC.MFD_ALLOW_SEALING;
        if (hugePageSize != 0)
        {
            if (!ulong.IsPow2(hugePageSize))
                throw new ArgumentException($"huge page size {hugePageSize} is not a power of two", nameof(hugePageSize));
            flags = LibC.MFD_CLOEXEC | LibC.MFD_ALLOW_SEALING | LibC.MFD_HUGETLB | ((uint)ulong.Log2(hugePageSize) << LibC.MFD_HUGE_SHIFT);
        }
        int fd = LibC.memfd_create(name, flags);
        if (fd < 0) throw PosixException.FromPInvoke($"memfd_create({name})");
        SafeFileHandle handle = Fd.Own(fd);
        try
        {
            if (size != 0)
                Truncate(handle, size);
            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Sets the file size.</summary>
    public static void Truncate(SafeFileHandle handle, ulong size)
    {
        if (size > long.MaxValue) throw new ArgumentOutOfRangeException(nameof(size));
        PosixException.Check(Syscall.ftruncate(Fd.Raw(handle), (long)size), "ftruncate");
    }

    /// <summary>Claims the pages of [offset, offset+length) now (fallocate mode 0), so that running
    /// out shows as ENOSPC/ENOMEM here instead of SIGBUS on first touch.</summary>
    /// <returns>null on success, otherwise the errno.</returns>
    public static Errno? TryAllocate(SafeFileHandle handle, ulong offset, ulong length, bool keepSize = false)
    {
        if (offset > long.MaxValue || length > long.MaxValue - offset)
            return Errno.EINVAL;
        int rc = LibC.fallocate(Fd.Raw(handle), keepSize ? LibC.FALLOC_FL_KEEP_SIZE : 0, (long)offset, (long)length);
        return rc == 0 ? null : NativeConvert.ToErrno(System.Runtime.InteropServices.Marshal.GetLastPInvokeError());
    }

    /// <summary>Returns the pages of [offset, offset+length) to the system (hole punch); the range
    /// then reads as zeros.</summary>
    public static void PunchHole(SafeFileHandle handle, ulong offset, ulong length)
    {
        if (offset > long.MaxValue || length > long.MaxValue - offset)
            throw new ArgumentOutOfRangeException(nameof(length));
        int rc = LibC.fallocate(Fd.Raw(handle), LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE, (long)offset, (long)length);
        if (rc != 0) throw PosixException.FromPInvoke("fallocate(PUNCH_HOLE)");
    }
}
