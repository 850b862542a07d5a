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

    private HugetlbMemoryBackend Backend(ulong capacity = 0, string mount = "", ulong pageSize = Page, DeviceDescription? device = null) =>
        new(new HugetlbMemoryOptions { Capacity = capacity, Mount = mount, PageSize = pageSize },
            device ?? Devices.Make(regionSize: Page, maxRegions: 32), Devices.Host(), _counters,
            NullLogger<HugetlbMemoryBackend>.Instance);

    private static IMemoryBlock Allocate(IMemoryBackend backend, ulong length, ulong token) =>
        Scenarios.Allocate(backend, length, token);

    [SkippableFact]
    public void Allocation_ClaimsZeroedHugePagesAtOnce()
    {
        Machine.RequireHugePages(4);
        using HugetlbMemoryBackend backend = Backend();
        Assert.Equal(Page, backend.PageSize);
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

    [SkippableFact]
    public void ReleasedThenReallocatedRegion_ReadsAsZeros()
    {
        Machine.RequireHugePages(2);
        using HugetlbMemoryBackend backend = Backend(capacity: Page);
        Scenarios.ReleasedThenReallocatedReadsZeros(backend, Page);
    }

    [SkippableFact]
    public void Release_GivesThePagesBack_EvenWhileAPeerStillMapsTheFd()
    {
        Machine.RequireHugePages(2);
        using HugetlbMemoryBackend backend = Backend();
        IMemoryBlock block = Allocate(backend, 2 * Page, 3);
        using var peerFd = Fd.Dup(block.Handle);
        using (Mapping peer = Blocks.Map(block, peerFd))
        {
            Blocks.Stamp(peer, 1);
            block.Release();
            Assert.Equal(0UL, Blocks.Allocated(peerFd)); // (not touched again: a huge page hole would fault a new page in)
        }
        block.Dispose();
    }

    [SkippableFact]
    public void FillingCapacity_RefusesWithAReason_AndServesAgainAfterARelease()
    {
        Machine.RequireHugePages(3);
        using HugetlbMemoryBackend backend = Backend(capacity: 3 * Page);
        Scenarios.FillCapacityThenServeAfterRelease(backend, _counters, Page, regions: 3);
    }

    [SkippableFact]
    public void MoreThanThePoolHas_IsRefusedWithHowToReserve_AndThePartialClaimIsGivenBack()
    {
        Machine.RequireHugePages(2);
        long free = Machine.FreeHugePages();
        ulong tooMuch = (ulong)(free + 1) * Page; // one region larger than every free page together
        using HugetlbMemoryBackend backend = Backend(device: Devices.Make(regionSize: tooMuch, maxRegions: 2));

        Assert.Null(backend.TryAllocate(tooMuch, 1, out string? failure));
        Assert.Contains("not enough 2 MiB huge pages", failure);
        Assert.Contains("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", failure);
        Assert.Equal(1, _counters.Get("memory.alloc-failed.claim-failed"));
        Assert.Equal(0UL, backend.Usage.Used);

        // The host keeps serving: an allocation that fits works, and the pages it claimed before
        // failing went back (else this one would find the pool short).
        Skip.If(Machine.FreeHugePages() < 1, "another process took the huge pages meanwhile");
        using IMemoryBlock ok = Allocate(backend, Page, 2);
    }

    [SkippableFact]
    public void FullHugetlbfsMount_RefusesWithAReason_AndServesAgainAfterARelease()
    {
        Machine.RequireHugePages(3);
        using PrivateMount mount = PrivateMount.Hugetlbfs(Page, 2 * Page);
        using HugetlbMemoryBackend backend = Backend(mount: mount.Path);
        Assert.Equal(mount.Path, backend.Mount);
        IMemoryBlock a = Allocate(backend, Page, 1);
        IMemoryBlock b = Allocate(backend, Page, 2);

        Assert.Null(backend.TryAllocate(Page, 3, out string? failure));
        Assert.Contains($"the hugetlbfs mount {mount.Path} is full", failure);
        Assert.Empty(Directory.EnumerateFileSystemEntries(mount.Path)); // region files have no name

        a.Release();
        a.Dispose();
        Assert.Equal(Page, mount.Used);
        using IMemoryBlock c = Allocate(backend, Page, 4);
        b.Release();
        b.Dispose();
    }

    [SkippableFact]
    public void HugePagesFree_ReturnsToItsStartingValue_AfterRelease_AndNoFdIsLeaked()
    {
        Machine.RequireHugePages(4);
        using HugetlbMemoryBackend backend = Backend();
        Blocks.WarmUp(backend);
        int fdsBefore = Fd.CountOpen();
        var seen = new List<string>();
        // HugePages_Free is machine-wide: if another process moves it meanwhile, measure again.
        for (int attempt = 0; attempt < 5; attempt++)
        {
            long start = Machine.FreeHugePages();
            var blocks = new[] { Allocate(backend, 2 * Page, 1), Allocate(backend, 2 * Page, 2) };
            long during = Machine.FreeHugePages();
            foreach (IMemoryBlock b in blocks) b.Release();
            long afterRelease = Machine.FreeHugePages();
            foreach (IMemoryBlock b in blocks) b.Dispose();
            long afterDispose = Machine.FreeHugePages();
            if (start - during == 4 && afterRelease == start && afterDispose == start)
            {
                Assert.Equal(fdsBefore, Fd.CountOpen());
                Assert.DoesNotContain("memfd:vism-dev0-", System.IO.File.ReadAllText("/proc/self/maps"));
                return;
            }
            seen.Add($"start {start}, allocated {during}, released {afterRelease}, disposed {afterDispose}");
        }
        Assert.Fail("HugePages_Free did not return to its starting value: " + string.Join("; ", seen));
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
            Assert.Equal(GiB, Blocks.Allocated(block.Handle));
            using Mapping m = Blocks.Map(block);
            m.Span(GiB - 4096, 4096).Fill(1);
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
