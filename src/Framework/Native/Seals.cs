using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace Vism.Native;

/// <summary>memfd seals (fcntl F_ADD_SEALS / F_GET_SEALS).</summary>
[Flags]
public enum FileSeals
{
    /// <summary>No seal.</summary>
    None = 0,

    /// <summary>F_SEAL_SEAL: no further seal can be added.</summary>
    Seal = 1,

    /// <summary>F_SEAL_SHRINK: the file cannot get smaller (a mapping of it can never run past its end).</summary>
    Shrink = 2,

    /// <summary>F_SEAL_GROW: the file cannot get larger.</summary>
    Grow = 4,

    /// <summary>F_SEAL_WRITE: the contents cannot change.</summary>
    Write = 8,

    /// <summary>F_SEAL_FUTURE_WRITE: no new writable mapping or write.</summary>
    FutureWrite = 16,
}

/// <summary>Seals on memfds: what vism adds so that nobody holding a descriptor can resize memory
/// vism maps or hands out. Only memfds (tmpfs or hugetlbfs backed) can be sealed; a plain or
/// hugetlbfs file cannot.</summary>
public static class Seals
{
    private const int F_ADD_SEALS = 1033;
    private const int F_GET_SEALS = 1034;

    /// <summary>The seals of <paramref name="fd"/>, or null when the file cannot be sealed (not a
    /// memfd, or a memfd created without MFD_ALLOW_SEALING reports F_SEAL_SEAL).</summary>
    public static FileSeals? Get(SafeHandle fd)
    {
        int rc = LibC.fcntl(Fd.Raw(fd), F_GET_SEALS, 0);
        return rc < 0 ? null : (FileSeals)rc;
    }

    /// <summary>Whether seals can still be added to <paramref name="fd"/>: a memfd created with
    /// MFD_ALLOW_SEALING and not sealed with F_SEAL_SEAL (a plain tmpfs file reports F_SEAL_SEAL).</summary>
    public static bool CanSeal(SafeHandle fd) => Get(fd) is { } seals && (seals & FileSeals.Seal) == 0;

    /// <summary>Makes sure <paramref name="fd"/> carries every seal in <paramref name="wanted"/>,
    /// adding the missing ones. Needs a descriptor open for writing.</summary>
    /// <returns>Null when all are in place now, otherwise why not (not a memfd, F_SEAL_SEAL already set, ...).</returns>
    public static string? Ensure(SafeHandle fd, FileSeals wanted)
    {
        FileSeals? have = Get(fd);
        if (have is null)
            return "the file cannot be sealed (not a memfd)";
        if ((have.Value & wanted) == wanted)
            return null;
        if ((have.Value & FileSeals.Seal) != 0)
            return $"the memfd is sealed against further seals without {wanted & ~have.Value}";
        if (LibC.fcntl(Fd.Raw(fd), F_ADD_SEALS, (int)(wanted & ~have.Value)) < 0)
            return $"fcntl(F_ADD_SEALS, {wanted & ~have.Value}) failed: {Stdlib.GetLastError()}";
        return null;
    }
}

public static partial class Fd
{
    /// <summary>A new read-only descriptor of the same file (open("/proc/self/fd/N", O_RDONLY)):
    /// whoever receives it can map the file read-only, but cannot map it writable, write to it,
    /// resize it (ftruncate, fallocate) or add seals.</summary>
    /// <param name="handle">A live descriptor.</param>
    /// <returns>The read-only descriptor, owned by the caller.</returns>
    public static SafeFileHandle ReopenReadOnly(SafeHandle handle)
    {
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = Syscall.open($"/proc/self/fd/{(int)handle.DangerousGetHandle()}", OpenFlags.O_RDONLY | OpenFlags.O_CLOEXEC);
            if (fd < 0) throw new PosixException("open(/proc/self/fd, O_RDONLY)", Stdlib.GetLastError());
            return Own(fd);
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }
}

/// <summary>The rule both transports apply to guest RAM a VMM hands over (vhost-user
/// SET_MEM_TABLE/ADD_MEM_REG, the MMIO memory table): a VMM that shrinks that memory after handing
/// it over must not be able to SIGBUS vism (which would end every tenant's device).</summary>
public static class GuestRamSeals
{
    /// <summary>Seals a memfd against shrinking (F_SEAL_SHRINK; QEMU's memory-backend-memfd already
    /// carries it) and tells whether the memory can still disappear under a mapping: a file that
    /// cannot be sealed (hugetlbfs or plain file, a memfd created without MFD_ALLOW_SEALING or
    /// sealed without SHRINK), or hugetlbfs memory at all (a punched hole may find no huge page to
    /// refill it when touched). Such memory is accessed with fault-safe copies only.</summary>
    /// <param name="fd">The region's descriptor, open for writing.</param>
    /// <returns>Null when the memory cannot shrink under vism, otherwise why it can.</returns>
    public static string? Check(SafeHandle fd)
    {
        string? problem = Seals.Ensure(fd, FileSeals.Shrink);
        if (problem is not null)
            return problem;
        if (Syscall.fstat(Fd.Raw(fd), out Stat st) == 0 && st.st_blksize > Environment.SystemPageSize)
            return "hugetlbfs memory: a punched hole may find no huge page to refill it";
        return null;
    }
}
