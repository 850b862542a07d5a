using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Vism.PluginKit;

/// <summary>File seals (memfd_create(2) with MFD_ALLOW_SEALING, fcntl F_ADD_SEALS): once added, a
/// seal cannot be removed, so a peer that receives the descriptor can rely on it.</summary>
[Flags]
public enum FileSeals
{
    /// <summary>No seals.</summary>
    None = 0,

    /// <summary>F_SEAL_SEAL: no further seals may be added.</summary>
    Seal = 0x1,

    /// <summary>F_SEAL_SHRINK: the file cannot shrink (a mapping peer never gets SIGBUS from a truncate).</summary>
    Shrink = 0x2,

    /// <summary>F_SEAL_GROW: the file cannot grow.</summary>
    Grow = 0x4,

    /// <summary>F_SEAL_WRITE: no writes, and no writable shared mappings.</summary>
    Write = 0x8,

    /// <summary>F_SEAL_FUTURE_WRITE: existing writable mappings stay; new writes are refused.</summary>
    FutureWrite = 0x10,
}

/// <summary>Anonymous shared-memory files (memfd_create), optionally of huge pages, and the
/// operations on their size, pages and seals. Every descriptor is close-on-exec and owned by the
/// returned <see cref="SafeFileHandle"/>; every method may be called from any thread.</summary>
public static class MemFd
{
    /// <summary>Creates a memfd of <paramref name="size"/> bytes. Its pages are not claimed yet: call
    /// <see cref="TryClaim"/> so that running out shows as an error, never as SIGBUS on first touch.</summary>
    /// <param name="name">Name shown in /proc/PID/fd (for debugging only).</param>
    /// <param name="size">Initial size (ftruncate); 0 leaves it empty.</param>
    /// <param name="hugePageSize">0 for normal pages, or a huge page size (2 MiB, 1 GiB) for MFD_HUGETLB;
    /// <paramref name="size"/> must then be a multiple of it.</param>
    /// <param name="allowSealing">Whether <see cref="AddSeals"/> may be used later.</param>
    /// <returns>The owned descriptor.</returns>
    /// <exception cref="NativeCallException">When the kernel refuses (no memfd, bad huge page size).</exception>
    public static SafeFileHandle Create(string name, ulong size = 0, ulong hugePageSize = 0, bool allowSealing = true)
    {
        ArgumentNullException.ThrowIfNull(name);
        uint flags = Interop.MFD_CLOEXEC;
        if (hugePageSize != 0)
        {
            if (!ulong.IsPow2(hugePageSize) || hugePageSize < 4096)
                throw new ArgumentException($"huge page size {hugePageSize} is not a power of two of at least 4096", nameof(hugePageSize));
            flags |= Interop.MFD_HUGETLB | ((uint)ulong.Log2(hugePageSize) << Interop.MFD_HUGE_SHIFT);
        }
        if (allowSealing)
            flags |= Interop.MFD_ALLOW_SEALING; // hugetlbfs memfds take seals too (Linux 4.16+)
        int fd = Interop.memfd_create(name, flags);
        if (fd < 0) throw NativeCallException.Last($"memfd_create({name})");
        var handle = new SafeFileHandle(fd, ownsHandle: true);
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

    /// <summary>Sets the size of the file behind <paramref name="handle"/> (ftruncate).</summary>
    /// <param name="handle">A file descriptor.</param>
    /// <param name="size">The new size in bytes.</param>
    /// <exception cref="NativeCallException">When the kernel refuses (for example a sealed file).</exception>
    public static void Truncate(SafeHandle handle, ulong size)
    {
        if (size > long.MaxValue) throw new ArgumentOutOfRangeException(nameof(size), $"{size} bytes is too large");
        if (Interop.ftruncate(Interop.Raw(handle), (long)size) != 0)
            throw NativeCallException.Last($"ftruncate({size})");
        GC.KeepAlive(handle);
    }

    /// <summary>Claims the pages of [<paramref name="offset"/>, +<paramref name="length"/>) now
    /// (fallocate mode 0, retried on EINTR), so exhaustion is reported here (ENOSPC, ENOMEM) rather
    /// than as SIGBUS when the memory is first touched. Works for memfds, tmpfs, hugetlbfs and disk files.</summary>
    /// <param name="handle">A file descriptor.</param>
    /// <param name="offset">First byte.</param>
    /// <param name="length">Bytes to claim.</param>
    /// <param name="failure">Why it failed, when it returns false (for example
    /// <c>fallocate(2097152 bytes at 0): No space left on device (errno 28)</c>).</param>
    /// <param name="keepSize">FALLOC_FL_KEEP_SIZE: do not grow the file.</param>
    /// <returns>Whether the pages are claimed.</returns>
    public static bool TryClaim(SafeHandle handle, ulong offset, ulong length, out string? failure, bool keepSize = false)
    {
        int errno = Fallocate(handle, keepSize ? Interop.FALLOC_FL_KEEP_SIZE : 0, offset, length);
        failure = errno == 0 ? null : new NativeCallException($"fallocate({length} bytes at {offset})", errno).Message;
        return errno == 0;
    }

    /// <summary>Gives the pages of [<paramref name="offset"/>, +<paramref name="length"/>) back to the
    /// system now (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE), even while a peer still maps the
    /// file; the range then reads as zeros.</summary>
    /// <param name="handle">A file descriptor.</param>
    /// <param name="offset">First byte (page aligned for the pages to be freed).</param>
    /// <param name="length">Bytes to return.</param>
    /// <exception cref="NativeCallException">When the kernel refuses.</exception>
    public static void PunchHole(SafeHandle handle, ulong offset, ulong length)
    {
        int errno = Fallocate(handle, Interop.FALLOC_FL_PUNCH_HOLE | Interop.FALLOC_FL_KEEP_SIZE, offset, length);
        if (errno != 0) throw new NativeCallException($"fallocate(punch hole, {length} bytes at {offset})", errno);
    }

    /// <summary>Adds <paramref name="seals"/> to a memfd created with sealing allowed.</summary>
    /// <param name="handle">The memfd.</param>
    /// <param name="seals">Seals to add.</param>
    /// <exception cref="NativeCallException">When the file does not allow them (EPERM), or a writable
    /// mapping exists while adding <see cref="FileSeals.Write"/> (EBUSY).</exception>
    public static void AddSeals(SafeHandle handle, FileSeals seals)
    {
        if (Interop.fcntl(Interop.Raw(handle), Interop.F_ADD_SEALS, (int)seals) != 0)
            throw NativeCallException.Last($"fcntl(F_ADD_SEALS, {seals})");
        GC.KeepAlive(handle);
    }

    /// <summary>The seals of a file.</summary>
    /// <param name="handle">The file.</param>
    /// <returns>Its seals (<see cref="FileSeals.Seal"/> alone for a memfd made without sealing).</returns>
    /// <exception cref="NativeCallException">When the file does not support seals (EINVAL).</exception>
    public static FileSeals GetSeals(SafeHandle handle)
    {
        int seals = Interop.fcntl(Interop.Raw(handle), Interop.F_GET_SEALS, 0);
        if (seals < 0) throw NativeCallException.Last("fcntl(F_GET_SEALS)");
        GC.KeepAlive(handle);
        return (FileSeals)seals;
    }

    /// <summary>fallocate retried on EINTR; returns 0 or the errno.</summary>
    internal static int Fallocate(SafeHandle handle, int mode, ulong offset, ulong length)
    {
        if (offset > long.MaxValue || length == 0 || length > long.MaxValue - offset)
            return 22; // EINVAL
        int fd = Interop.Raw(handle);
        try
        {
            while (true)
            {
                if (Interop.fallocate(fd, mode, (long)offset, (long)length) == 0) return 0;
                int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                if (errno != Interop.EINTR) return errno;
            }
        }
        finally
        {
            GC.KeepAlive(handle);
        }
    }
}
