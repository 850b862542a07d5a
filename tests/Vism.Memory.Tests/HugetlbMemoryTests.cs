using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Memory.Hugetlb;
using Vism.Native;
using Vism.Testing;

namespace Vism.Memory.Tests;

public sealed class HugetlbMemoryTests
{
    private const ulong MiB = Devices.MiB;
    private const ulong Page = 2 * MiB;
    private readonly Counters _counters = new();

    /// <summary>Both ways of claiming pages, for the behaviours they share.</summary>
    public static TheoryData<HugePageClaim> Claims => new(Enum.GetValues<HugePageClaim>());

    private HugetlbMemoryBackend Backend(ulong capacity = 0, string mount = "", ulong pageSize = Page, DeviceDescription? device = null,
                                         HugePageClaim claim = HugePageClaim.Reserve) =>
        new(new HugetlbMemoryOptions { Capacity = capacity, Mount = mount, PageSize = pageSize, Claim = claim },
            device ?? Devices.Make(regionSize: Page, maxRegions: 32), Devices.Host(), _counters,
            NullLogger<HugetlbMemoryBackend>.Instance);

    private static IMemoryBlock Allocate(IMemoryBackend backend, ulong length, ulong token) =>
        Scenarios.Allocate(backend, length, token);

    [SkippableFact]
    public void Allocation_ReservesThePagesWithoutAllocatingThem_AndAPeerMappingLaterGetsEveryPageZeroed()
    {
        Machine.RequireHugePages(4);
        using HugetlbMemoryBackend backend = Backend();
        Assert.Equal(Page, backend.PageSize);
        Assert.Equal(HugePageClaim.Reserve, backend.Claim);
        Blocks.WarmUp(backend);
        MachineWide.Measure(() =>
        {
            PoolState start = PoolState.Now();
            using IMemoryBlock block = Allocate(backend, 4 * Page, 1);
            PoolState reserved = PoolState.Now();
            Assert.Equal(0UL, block.Offset);
            Assert.Equal((long)(4 * Page), Fd.Size(block.Handle));
            Assert.Equal(0UL, Blocks.Allocated(block.Handle)); // nothing allocated, nothing zeroed: the ALLOC did no per-page work

            // The backend maps nothing; a peer (its own copy of the fd, as SCM_RIGHTS gives a VMM)
            // maps the region afterwards and touches every page: each comes from the reservation.
            using var peerFd = Fd.Dup(block.Handle);
            using (Mapping peer = Blocks.Map(block, peerFd))
            {
                Assert.True(Blocks.IsZero(peer));
                Blocks.Stamp(peer, 9);
            }
            PoolState touched = PoolState.Now();
            Assert.Equal(4 * Page, Blocks.Allocated(block.Handle));
            using (Mapping again = Blocks.Map(block)) Assert.True(Blocks.HasStamp(again, 9));
            block.Release();
            return reserved == start with { Reserved = start.Reserved + 4 } && touched == start with { Free = start.Free - 4 }
                ? null : $"start {start}, after ALLOC {reserved} (4 more reserved expected), after touching {touched} (4 fewer free, none reserved expected)";
        });
    }

    [SkippableFact]
    public void FallocateClaim_AllocatesZeroedPagesAtTheAlloc()
    {
        Machine.RequireHugePages(4);
        using HugetlbMemoryBackend backend = Backend(claim: HugePageClaim.Fallocate);
        Assert.Equal(HugePageClaim.Fallocate, backend.Claim);
        using IMemoryBlock block = Allocate(backend, 2 * Page, 1);

        Assert.Equal(0UL, block.Offset);
        Assert.Equal(2 * Page, block.Length);
        Assert.Equal(2 * Page, Blocks.Allocated(block.Handle)); // both pages taken from the pool now
        using Mapping m = Blocks.Map(block);
        Assert.True(Blocks.IsZero(m));
    }

    [SkippableFact]
    public void APeersSecondMappingOfTheFd_SeesTheFirstMappingsWrites_BothWays()
    {
        Machine.RequireHugePages(2);
        using HugetlbMemoryBackend backend = Backend();
        Scenarios.PeerMappingSeesWritesBothWays(backend, Page);
    }

    [SkippableTheory]
    [MemberData(nameof(Claims))]
    public void ReleasedThenReallocatedRegion_ReadsAsZeros(HugePageClaim claim)
    {
        Machine.RequireHugePages(2);
        using HugetlbMemoryBackend backend = Backend(capacity: Page, claim: claim);
        Scenarios.ReleasedThenReallocatedReadsZeros(backend, Page);
    }

    [SkippableTheory]
    [MemberData(nameof(Claims))]
    public void Release_GivesPagesBackEvenWhileAPeerStillMapsTheFd_AndReservationsWhenTheFileIsClosed(HugePageClaim claim)
    {
        Machine.RequireHugePages(5);
        using HugetlbMemoryBackend backend = Backend(claim: claim);
        Blocks.WarmUp(backend);
        MachineWide.Measure(() =>
        {
            PoolState start = PoolState.Now();
            IMemoryBlock block = Allocate(backend, 4 * Page, 3);
            using var peerFd = Fd.Dup(block.Handle);
            using Mapping peer = Blocks.Map(block, peerFd);
            peer.Span(0, 4096).Fill(0x5A);      // the peer touched two of the four pages;
            peer.Span(Page, 4096).Fill(0x5A);   // with "reserve", the other two are still only reserved

            block.Release();
            PoolState released = PoolState.Now();
            Assert.Equal(0UL, Blocks.Allocated(peerFd));
            Assert.Equal((long)(4 * Page), Fd.Size(peerFd)); // the size stays: the peer's mapping is still valid

            // A peer that touches the released region anyway reads zeros, never the old contents,
            // from a fresh page it holds until it lets go of the file.
            Skip.If(Machine.AvailableHugePages() < 1, "another process took every huge page meanwhile");
            Assert.True(peer.Span(0, 4096).IndexOfAnyExcept((byte)0) < 0, "a late peer read the released region's old contents");
            peer.Dispose();
            peerFd.Dispose();
            block.Dispose();
            PoolState closed = PoolState.Now();
            // The region's memfd is sealed against resizing (issue 13.2), so the release punches the
            // pages out instead of truncating: the two pages nobody touched stay reserved for the
            // file until its last descriptor and mapping are gone.
            PoolState expectedReleased = claim == HugePageClaim.Reserve ? start with { Reserved = start.Reserved + 2 } : start;
            return released == expectedReleased && closed == start ? null : $"start {start}, released {released}, closed {closed}";
        });
    }

    [SkippableFact]
    public void FillingCapacity_RefusesWithAReason_AndServesAgainAfterARelease()
    {
        Machine.RequireHugePages(3);
        using HugetlbMemoryBackend backend = Backend(capacity: 3 * Page);
        Scenarios.FillCapacityThenServeAfterRelease(backend, _counters, Page, regions: 3);
    }

    [SkippableTheory]
    [MemberData(nameof(Claims))]
    public void MoreThanThePoolHas_IsRefusedSayingHowToGrowThePool_AndNothingStaysClaimed(HugePageClaim claim)
    {
        Machine.RequireHugePages(2);
        MachineWide.Measure(() =>
        {
            var counters = new Counters();
            PoolState start = PoolState.Now();
            ulong tooMuch = (ulong)(start.Free - start.Reserved + 1) * Page; // one region larger than every available page together
            using var backend = new HugetlbMemoryBackend(new HugetlbMemoryOptions { Claim = claim },
                Devices.Make(regionSize: tooMuch, maxRegions: 2), Devices.Host(), counters, NullLogger<HugetlbMemoryBackend>.Instance);

            Assert.Null(backend.TryAllocate(tooMuch, 1, out Refusal refusal));
            string failure = refusal.Detail;
            PoolState after = PoolState.Now();
            Assert.Contains("not enough 2 MiB huge pages", failure);
            Assert.Contains("add them to the pool as root: echo", failure);
            Assert.Contains("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", failure);
            Assert.Equal(1, counters.Get("memory.alloc-failed.claim-failed"));
            Assert.Equal(0UL, backend.Usage.Used);

            // The host keeps serving: an allocation that fits works.
            Skip.If(Machine.AvailableHugePages() < 1, "another process took the huge pages meanwhile");
            using (IMemoryBlock ok = Allocate(backend, Page, 2)) ok.Release();
            return after == start ? null : $"{start} before the refused ALLOC, {after} after it";
        });
    }

    [SkippableTheory]
    [MemberData(nameof(Claims))]
    public void FullHugetlbfsMount_RefusesWithAReason_EveryClaimedPageCanBeTouched_AndItServesAgainAfterARelease(HugePageClaim claim)
    {
        Machine.RequireHugePages(4);
        using PrivateMount mount = PrivateMount.Hugetlbfs(Page, 4 * Page);
        using HugetlbMemoryBackend backend = Backend(mount: mount.Path, claim: claim);
        Assert.Equal(mount.Path, backend.Mount);
        IMemoryBlock a = Allocate(backend, 3 * Page, 1);
        IMemoryBlock b = Allocate(backend, Page, 2);
        Assert.Equal(4 * Page, mount.Used); // reservations count against the mount's size= like pages

        Assert.Null(backend.TryAllocate(Page, 3, out Refusal refusal));
        string failure = refusal.Detail;
        Assert.Contains($"the hugetlbfs mount {mount.Path} is full", failure);
        Assert.Empty(Directory.EnumerateFileSystemEntries(mount.Path)); // region files have no name

        // The pages the ALLOCs claimed are theirs: touching every one of them succeeds (no SIGBUS)
        // although the mount has nothing left to give.
        foreach (IMemoryBlock block in new[] { a, b })
        {
            using Mapping m = Blocks.Map(block);
            Blocks.Stamp(m, 1);
            Assert.Equal(block.Length, Blocks.Allocated(block.Handle));
        }

        a.Release();
        a.Dispose();
        Assert.Equal(Page, mount.Used);
        using IMemoryBlock c = Allocate(backend, Page, 4);
        b.Release();
        b.Dispose();
    }

    [SkippableTheory]
    [MemberData(nameof(Claims))]
    public void HugePagesFreeAndReserved_ReturnToTheirStartingValues_AfterRelease_AndNoFdIsLeaked(HugePageClaim claim)
    {
        Machine.RequireHugePages(4);
        using HugetlbMemoryBackend backend = Backend(claim: claim);
        Blocks.WarmUp(backend);
        int fdsBefore = Fd.CountOpen();
        // With "reserve" the ALLOCs reserve 4 pages, with "fallocate" they take 4 free pages.
        PoolState Expected(PoolState start) => claim == HugePageClaim.Reserve
            ? start with { Reserved = start.Reserved + 4 }
            : start with { Free = start.Free - 4 };
        MachineWide.Measure(() =>
        {
            PoolState start = PoolState.Now();
            var blocks = new[] { Allocate(backend, 2 * Page, 1), Allocate(backend, 2 * Page, 2) };
            PoolState during = PoolState.Now();
            foreach (IMemoryBlock b in blocks) b.Release();
            PoolState afterRelease = PoolState.Now();
            foreach (IMemoryBlock b in blocks) b.Dispose();
            PoolState afterDispose = PoolState.Now();
            // Sealed memfds are punched, not truncated: untouched reservations go when vism closes
            // the file, which the core does right after the release.
            return during == Expected(start) && afterRelease == (claim == HugePageClaim.Reserve ? Expected(start) : start) && afterDispose == start
                ? null : $"start {start}, allocated {during}, released {afterRelease}, disposed {afterDispose}";
        });
        Descriptors.AssertBackTo(fdsBefore);
        Assert.DoesNotContain("memfd:vism-dev0-", System.IO.File.ReadAllText("/proc/self/maps")); // the reserving mapping is gone
    }

    [SkippableFact]
    public void OneGiBPages_AreSelectable()
    {
        const ulong GiB = 1UL << 30;
        string knob = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages";
        Skip.IfNot(System.IO.File.Exists(knob), "this kernel has no 1 GiB huge pages");
        string before = System.IO.File.ReadAllText(knob);
        try
        {
            Machine.RequireHugePages(1, GiB);
            using HugetlbMemoryBackend backend = Backend(pageSize: GiB, device: Devices.Make(regionSize: GiB, maxRegions: 1));
            Assert.Equal(GiB, backend.PageSize);
            using IMemoryBlock block = Allocate(backend, GiB, 1);
            Assert.Equal(0UL, Blocks.Allocated(block.Handle)); // reserved, not yet zeroed
            using Mapping m = Blocks.Map(block);
            m.Span(GiB - 4096, 4096).Fill(1);
            Assert.Equal(GiB, Blocks.Allocated(block.Handle));
            block.Release();
            Assert.Equal(0UL, Blocks.Allocated(block.Handle));
        }
        finally
        {
            if (Machine.IsRoot) System.IO.File.WriteAllText(knob, before); // give the gigabyte back to the machine
        }
    }

    [SkippableFact]
    public void Recover_IsAlwaysEmpty()
    {
        Machine.RequireHugePages(1);
        using HugetlbMemoryBackend backend = Backend();
        Assert.Empty(backend.Recover());
    }
}
