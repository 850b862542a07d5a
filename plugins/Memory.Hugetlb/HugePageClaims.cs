using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Memory.Shared;
using Vism.Native;

namespace Vism.Memory.Hugetlb;

/// <summary>How a region's huge pages are claimed at ALLOC (the <c>claim</c> option).</summary>
public enum HugePageClaim
{
    /// <summary>Reserve the pages for the region's file (HugePages_Rsvd) by mapping it shared once:
    /// nothing is allocated or zeroed, so an ALLOC costs the same whatever the region's size; the
    /// kernel hands the reserved pages out, zeroed, when the region is first touched.</summary>
    Reserve,

    /// <summary>Allocate every page with fallocate: the kernel zeroes each page at ALLOC, which is
    /// linear in the region's size, and nobody pays a page fault later.</summary>
    Fallocate,
}

/// <summary>
/// The two ways to claim huge pages, with the release both share. What they rely on was checked
/// on Linux 6.18 by the tests in <c>tests/Vism.Memory.Tests/HugetlbMemoryTests.cs</c>:
/// <list type="bullet">
/// <item>A MAP_SHARED mapping of a hugetlb file reserves the huge pages of its range for the file
/// (HugePages_Rsvd grows, HugePages_Free does not move, no page is allocated or zeroed). The
/// reservation belongs to the file, not the mapping: it outlives munmap, and a fault through any
/// later mapping of the file (a peer's) gets a page from it, so it can never be refused. When the
/// pool cannot cover the range the mmap fails with ENOMEM and reserves nothing.</item>
/// <item>A hole punch frees the pages in its range but leaves a reservation nobody has faulted in
/// place; ftruncate to 0 drops both pages and reservations (also while the file is mapped).</item>
/// <item>A memfd region is sealed against resizing (F_SEAL_GROW|F_SEAL_SHRINK|F_SEAL_SEAL, issue
/// 13.2), so its release punches instead of truncating: the reservations of pages nobody touched go
/// back when the file's last descriptor and mapping are gone (vism closes its own right after the
/// release). A region file on a hugetlbfs mount cannot be sealed and is still truncated.</item>
/// </list>
/// </summary>
internal abstract class HugePageClaims : PageClaim
{
    /// <summary>The claim selected by <paramref name="claim"/>.</summary>
    /// <param name="claim">The option's value.</param>
    /// <returns>The claim.</returns>
    public static PageClaim For(HugePageClaim claim) => claim switch
    {
        HugePageClaim.Reserve => ReserveClaim.Instance,
        HugePageClaim.Fallocate => FallocateClaim.Instance,
        _ => throw new ArgumentOutOfRangeException(nameof(claim), claim, "not a claim"),
    };

    /// <summary>Truncates the file to 0, which frees its pages and drops its reservations (a hole
    /// punch would keep the reservations), then gives it its size back, with neither: a peer that
    /// still maps the file and touches it gets a fresh zeroed page, as after a hole punch, or a
    /// SIGBUS when the pool has none to give.</summary>
    public sealed override void Release(SafeFileHandle file, ulong length)
    {
        if ((Seals.Get(file) & FileSeals.Shrink) == FileSeals.Shrink)
        {
            // A sealed memfd cannot be truncated: punch the pages out instead. Reservations nobody
            // faulted stay with the file until its last descriptor and mapping are gone.
            MemFd.PunchHole(file, 0, length);
            return;
        }
        if (Posix.Truncate(file, 0) is { } e)
            throw new PosixException("ftruncate(0)", e);
        if (Posix.Truncate(file, length) is { } e2)
            throw new PosixException("ftruncate(length)", e2);
    }

    private sealed class ReserveClaim : HugePageClaims
    {
        public static readonly ReserveClaim Instance = new();

        public override string Operation => "reserving";

        /// <summary>Sizes the file and maps all of it shared once: the mapping makes the kernel
        /// reserve the pages for the file, then goes away while the reservation stays.</summary>
        public override Errno? Claim(SafeFileHandle file, ulong length) =>
            Posix.Truncate(file, length) ?? Posix.MapOnce(file, length);
    }

    private sealed class FallocateClaim : HugePageClaims
    {
        public static readonly FallocateClaim Instance = new();

        public override string Operation => "fallocate of";

        public override Errno? Claim(SafeFileHandle file, ulong length) => Posix.Claim(file, length);
    }
}
