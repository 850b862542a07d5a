using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Memory.File;
using Vism.Native;
using Vism.Testing;

namespace Vism.Memory.Tests;

public sealed class FileMemoryTests : IDisposable
{
    private const ulong MiB = Devices.MiB;
    private readonly TempDir _shm = new("vism-file");
    private readonly Counters _counters = new();

    private FileMemoryBackend Backend(string? directory = null, ulong capacity = 0, bool persist = false,
                                      DeviceDescription? device = null, string prefix = "vism-") =>
        new(new FileMemoryOptions { Directory = directory ?? _shm.Path, Capacity = capacity, Persist = persist, Prefix = prefix },
            device ?? Devices.Make(), Devices.Host(), _counters, NullLogger<FileMemoryBackend>.Instance);

    private static IMemoryBlock Allocate(IMemoryBackend backend, ulong length, ulong token) =>
        Scenarios.Allocate(backend, length, token);

    public void Dispose() => _shm.Dispose();

    [Fact]
    public void Allocation_IsAZeroedFileOfTheRequestedLengthMappedFromOffsetZero()
    {
        using FileMemoryBackend backend = Backend();
        using IMemoryBlock block = Allocate(backend, 2 * MiB, 0x1234);

        Assert.Equal(0UL, block.Offset);
        Assert.Equal(2 * MiB, block.Length);
        Assert.Equal((long)(2 * MiB), Fd.Size(block.Handle));
        Assert.Equal(2 * MiB, Blocks.Allocated(block.Handle)); // claimed now, not on first touch
        using Mapping m = Blocks.Map(block);
        Assert.True(Blocks.IsZero(m));
    }

    [Fact]
    public void APeersSecondMappingOfTheFd_SeesTheFirstMappingsWrites_BothWays()
    {
        using FileMemoryBackend backend = Backend();
        Scenarios.PeerMappingSeesWritesBothWays(backend, MiB);
    }

    [Fact]
    public void SeveralDevicesMappingOneBlockConcurrently_AllSeeEveryWrite()
    {
        using FileMemoryBackend backend = Backend();
        using IMemoryBlock block = Allocate(backend, MiB, 8);
        const int peers = 4;
        var maps = Enumerable.Range(0, peers).Select(_ => Blocks.Map(block, Fd.Dup(block.Handle))).ToArray();
        try
        {
            // Each peer writes its own quarter from its own thread while the others do the same.
            Parallel.For(0, peers, p => maps[p].Span((ulong)p * (MiB / peers), (int)(MiB / peers)).Fill((byte)(p + 1)));
            for (int reader = 0; reader < peers; reader++)
                for (int p = 0; p < peers; p++)
                    Assert.True(maps[reader].Span((ulong)p * (MiB / peers), (int)(MiB / peers)).IndexOfAnyExcept((byte)(p + 1)) < 0);
        }
        finally
        {
            foreach (Mapping m in maps) m.Dispose();
        }
    }

    [Fact]
    public void ReleasedThenReallocatedRegion_ReadsAsZeros()
    {
        using FileMemoryBackend backend = Backend(capacity: MiB);
        Scenarios.ReleasedThenReallocatedReadsZeros(backend, MiB);
    }

    [Fact]
    public void Release_PunchesTheRegionOut_EvenWhileAPeerStillMapsIt()
    {
        using FileMemoryBackend backend = Backend();
        IMemoryBlock block = Allocate(backend, MiB, 3);
        using var peerFd = Fd.Dup(block.Handle);
        using Mapping peer = Blocks.Map(block, peerFd);
        Blocks.Stamp(peer, 0x77);

        block.Release();

        Assert.Equal(0UL, Blocks.Allocated(peerFd)); // pages returned without waiting for the peer
        Assert.True(Blocks.IsZero(peer));           // and the peer reads zeros, not stale data
        block.Dispose();
    }

    [Fact]
    public void FillingCapacity_RefusesWithAReason_AndServesAgainAfterARelease()
    {
        using FileMemoryBackend backend = Backend(capacity: 4 * MiB);
        Scenarios.FillCapacityThenServeAfterRelease(backend, _counters, MiB, regions: 4);
    }

    [SkippableFact]
    public void FullTmpfs_RefusesTheAllocationWithAReason_AndEveryClaimedPageIsUsable()
    {
        using PrivateMount tmpfs = PrivateMount.Tmpfs(4 * MiB);
        using FileMemoryBackend backend = Backend(tmpfs.Path, capacity: 64 * MiB);
        var blocks = new List<IMemoryBlock>();
        IMemoryBlock? block;
        Refusal failure;
        while ((block = backend.TryAllocate(MiB, (ulong)blocks.Count + 1, out failure)) is not null)
            blocks.Add(block);

        Assert.InRange(blocks.Count, 3, 4);
        Assert.Contains("no space left", failure.Detail);
        Assert.Equal(1, _counters.Get("memory.alloc-failed.claim-failed"));
        Assert.Equal((ulong)blocks.Count * MiB, backend.Usage.Used); // the refused one is not counted,
        Assert.Equal((ulong)blocks.Count * MiB, backend.Usage.HighWater); // not even in the high-water mark
        foreach (IMemoryBlock b in blocks)
        {
            using Mapping m = Blocks.Map(b);
            Blocks.Stamp(m, 1); // touching every page of a full tmpfs: no SIGBUS, the pages were claimed
        }

        blocks[0].Release();
        blocks[0].Dispose();
        blocks[0] = Allocate(backend, MiB, 1000);
        foreach (IMemoryBlock b in blocks) { b.Release(); b.Dispose(); }
    }

    [SkippableFact]
    public void TmpfsSpace_ReturnsToItsStartingValue_AfterRelease()
    {
        using PrivateMount tmpfs = PrivateMount.Tmpfs(32 * MiB);
        using FileMemoryBackend backend = Backend(tmpfs.Path);
        ulong start = tmpfs.Used;

        var blocks = Enumerable.Range(1, 8).Select(t => Allocate(backend, 2 * MiB, (ulong)t)).ToList();
        Assert.True(tmpfs.Used >= start + 16 * MiB, $"claimed {tmpfs.Used - start} bytes, expected 16 MiB");
        var peers = blocks.Select(b => Fd.Dup(b.Handle)).ToList(); // peers still holding the fds
        foreach (IMemoryBlock b in blocks) b.Release();
        Assert.Equal(start, tmpfs.Used);

        foreach (IMemoryBlock b in blocks) b.Dispose();
        foreach (var p in peers) p.Dispose();
        Assert.Equal(start, tmpfs.Used);
    }

    [Fact]
    public void WithoutPersist_NoFileIsEverVisibleInTheDirectory_AndNoFdIsLeaked()
    {
        using (FileMemoryBackend warm = Backend()) Blocks.WarmUp(warm);
        int fdsBefore = Fd.CountOpen();
        using (FileMemoryBackend backend = Backend())
        {
            var blocks = Enumerable.Range(1, 16).Select(t => Allocate(backend, MiB, (ulong)t)).ToList();
            Assert.Empty(Directory.EnumerateFileSystemEntries(_shm.Path));
            foreach (IMemoryBlock b in blocks.Take(8)) b.Release();
            foreach (IMemoryBlock b in blocks) b.Dispose();
        }
        Assert.Empty(Directory.EnumerateFileSystemEntries(_shm.Path));
        Descriptors.AssertBackTo(fdsBefore);
        Assert.DoesNotContain(_shm.Path, System.IO.File.ReadAllText("/proc/self/maps")); // the backend maps nothing itself
    }

    [Fact]
    public void Usage_CountsUsedBytesAndTheHighWaterMark()
    {
        using FileMemoryBackend backend = Backend(capacity: 8 * MiB);
        Assert.Equal(new MemoryUsage(8 * MiB, 0, 0), backend.Usage);
        IMemoryBlock a = Allocate(backend, 2 * MiB, 1);
        IMemoryBlock b = Allocate(backend, 4 * MiB, 2);
        Assert.Equal(new MemoryUsage(8 * MiB, 6 * MiB, 6 * MiB), backend.Usage);
        Assert.Equal(2 * MiB, backend.Usage.Free);

        a.Release();
        a.Release(); // idempotent
        a.Dispose(); // counted once
        Assert.Equal(new MemoryUsage(8 * MiB, 4 * MiB, 6 * MiB), backend.Usage);
        b.Dispose(); // closing without release also gives the bytes back
        Assert.Equal(new MemoryUsage(8 * MiB, 0, 6 * MiB), backend.Usage);
    }

    [Fact]
    public void ReleasesAndDisposesRacingOnManyThreads_GiveEachRegionBackExactlyOnce()
    {
        using FileMemoryBackend backend = Backend(capacity: 32 * MiB);
        var blocks = Enumerable.Range(1, 32).Select(t => Allocate(backend, MiB, (ulong)t)).ToList();
        Assert.Equal(32 * MiB, backend.Usage.Used);

        // Two devices' loops may free the same region's backing at once (release on one, dispose
        // on another); meanwhile this device keeps allocating and reading its usage.
        var fresh = new System.Collections.Concurrent.ConcurrentBag<IMemoryBlock>();
        Parallel.Invoke(
            () => Parallel.ForEach(blocks, b => b.Release()),
            () => Parallel.ForEach(blocks, b => b.Dispose()),
            () => { for (int i = 0; i < 200; i++) Assert.InRange(backend.Usage.Used, 0UL, 32 * MiB); },
            () =>
            {
                for (int i = 0; i < 8; i++)
                    if (backend.TryAllocate(MiB, 1000 + (ulong)i, out _) is { } b) fresh.Add(b);
            });

        Assert.Equal((ulong)fresh.Count * MiB, backend.Usage.Used);
        foreach (IMemoryBlock b in fresh) { b.Release(); b.Dispose(); }
        Assert.Equal(new MemoryUsage(32 * MiB, 0, 32 * MiB), backend.Usage);
    }

    [Fact]
    public void ZeroCapacity_MeansTheRegionsWindowSize()
    {
        using FileMemoryBackend backend = Backend(device: Devices.Make(regionSize: MiB, maxRegions: 3));
        Assert.Equal(3 * MiB, backend.Usage.Capacity);
    }

    [Fact]
    public void LengthThatIsNotAPageMultiple_IsRefusedWithAReason()
    {
        using FileMemoryBackend backend = Backend();
        Assert.Null(backend.TryAllocate(MiB + 1, 1, out Refusal failure));
        Assert.Contains("multiple of the page size", failure.Detail);
        Assert.Null(backend.TryAllocate(0, 1, out _));
        Assert.Equal(0UL, backend.Usage.Used);
    }

    [Fact]
    public void BlocksStayUsableAfterTheirBackendIsDisposed()
    {
        // A region allocated by a device that goes away can still be attached by a peer.
        FileMemoryBackend backend = Backend();
        IMemoryBlock block = Allocate(backend, MiB, 5);
        backend.Dispose();
        Assert.Throws<ObjectDisposedException>(() => backend.TryAllocate(MiB, 6, out _));

        using (Mapping m = Blocks.Map(block)) Blocks.Stamp(m, 3);
        block.Release();
        Assert.Equal(0UL, Blocks.Allocated(block.Handle));
        block.Dispose();
    }

    [Fact]
    public void Persist_DisposedBackend_ANewOneOnTheSameDirectoryRecoversTokensAndContents()
    {
        var tokens = new ulong[] { 0x1111_2222_3333_4444, 0xFFFF_0000_0000_0001, 42 };
        using (FileMemoryBackend backend = Backend(persist: true))
        {
            Assert.Empty(backend.Recover());
            for (int i = 0; i < tokens.Length; i++)
            {
                IMemoryBlock b = Allocate(backend, (ulong)(i + 1) * MiB, tokens[i]);
                using (Mapping m = Blocks.Map(b)) Blocks.Stamp(m, (byte)(i * 40));
                b.Dispose(); // host shutdown: close, do not release
            }
        }

        using FileMemoryBackend restarted = Backend(persist: true);
        IReadOnlyList<RecoveredBlock> found = restarted.Recover();
        try
        {
            Assert.Equal(tokens.Order(), found.Select(r => r.Token).Order());
            foreach (RecoveredBlock r in found)
            {
                int i = Array.IndexOf(tokens, r.Token);
                Assert.Equal((ulong)(i + 1) * MiB, r.Block.Length);
                using Mapping m = Blocks.Map(r.Block);
                Assert.True(Blocks.HasStamp(m, (byte)(i * 40)), $"contents of region {r.Token:x} changed");
            }
            Assert.Equal(6 * MiB, restarted.Usage.Used);
        }
        finally
        {
            foreach (RecoveredBlock r in found) r.Block.Dispose();
        }
    }

    [Fact]
    public void Persist_ReleasedRegionsAreNotRecovered_AndLeaveNoFile()
    {
        using (FileMemoryBackend backend = Backend(persist: true))
        {
            backend.Recover();
            IMemoryBlock kept = Allocate(backend, MiB, 10);
            IMemoryBlock freed = Allocate(backend, MiB, 11);
            Assert.Equal(2, Directory.GetFiles(_shm.Path).Length);
            freed.Release();
            freed.Dispose();
            kept.Dispose();
        }
        Assert.Single(Directory.GetFiles(_shm.Path));

        using FileMemoryBackend restarted = Backend(persist: true);
        IReadOnlyList<RecoveredBlock> found = restarted.Recover();
        Assert.Equal([10UL], found.Select(r => r.Token));
        found[0].Block.Release();
        found[0].Block.Dispose();
        Assert.Empty(Directory.GetFiles(_shm.Path));
    }

    [Fact]
    public void Persist_AllocationInterruptedByACrash_IsNotRecovered_AndItsTemporaryFileIsRemoved()
    {
        using (FileMemoryBackend backend = Backend(persist: true))
        {
            backend.Recover();
            Allocate(backend, MiB, 20).Dispose();
        }
        // What a crash between create and rename leaves: a hidden temporary name, partly claimed.
        string temp = Path.Combine(_shm.Path, ".vism-dev0-00000000deadbeef.tmp");
        System.IO.File.WriteAllBytes(temp, new byte[4096]);

        using FileMemoryBackend restarted = Backend(persist: true);
        IReadOnlyList<RecoveredBlock> found = restarted.Recover();
        Assert.Equal([20UL], found.Select(r => r.Token));
        Assert.False(System.IO.File.Exists(temp));
        Assert.Equal(1, _counters.Get("memory.recover.removed-temporary"));
        foreach (RecoveredBlock r in found) r.Block.Dispose();
    }

    /// <summary>Issue 13.2: a peer with a writable descriptor grew one persisted region file to
    /// 1 GiB and shrank another to 4 KiB before the host restarted. Neither is adopted (the one grown
    /// would have been a region that can be neither attached nor freed, eating the capacity); both
    /// stay on disk for the operator; the untouched one comes back with its contents.</summary>
    [Fact]
    public void Persist_TamperedSize_IsNotRecovered()
    {
        using (FileMemoryBackend backend = Backend(persist: true))
        {
            backend.Recover();
            foreach (ulong token in new ulong[] { 30, 31, 32 })
            {
                IMemoryBlock b = Allocate(backend, MiB, token);
                using (Mapping m = Blocks.Map(b)) Blocks.Stamp(m, (byte)token);
                if (token == 31) Assert.Equal(0, Mono.Unix.Native.Syscall.ftruncate(Vism.Native.Fd.Raw(b.Handle), 1L << 30));
                if (token == 32) Assert.Equal(0, Mono.Unix.Native.Syscall.ftruncate(Vism.Native.Fd.Raw(b.Handle), 4096));
                b.Dispose();
            }
        }

        using FileMemoryBackend restarted = Backend(persist: true);
        IReadOnlyList<RecoveredBlock> found = restarted.Recover();
        try
        {
            RecoveredBlock kept = Assert.Single(found);
            Assert.Equal(30UL, kept.Token);
            using (Mapping m = Blocks.Map(kept.Block)) Assert.True(Blocks.HasStamp(m, 30));
            Assert.Equal(2, _counters.Get("memory.recover.skipped"));
            Assert.Equal(MiB, restarted.Usage.Used);
            Assert.Equal(3, Directory.GetFiles(_shm.Path).Length);
        }
        finally
        {
            foreach (RecoveredBlock r in found) r.Block.Dispose();
        }
    }

    /// <summary>Issue 13.2: a region file resized through a writable descriptor is refused at the
    /// next map (CheckSize); a grown one is cut back so the accounting holds.</summary>
    [Fact]
    public void CheckSize_FileResizedByAPeer_IsReported_AndAGrownOneIsCutBack()
    {
        using FileMemoryBackend backend = Backend();
        IMemoryBlock block = Allocate(backend, MiB, 40);
        Assert.Null(block.CheckSize());
        Assert.Equal(0, Mono.Unix.Native.Syscall.ftruncate(Vism.Native.Fd.Raw(block.Handle), 64L << 20));
        Assert.Contains("resized by a peer", block.CheckSize());
        Assert.Equal((long)MiB, Vism.Native.Fd.Size(block.Handle));
        Assert.Null(block.CheckSize());
        Assert.Equal(0, Mono.Unix.Native.Syscall.ftruncate(Vism.Native.Fd.Raw(block.Handle), 4096));
        Assert.Contains("resized by a peer", block.CheckSize());
        Assert.Equal(2, _counters.Get("memory.size-mismatch"));
        block.Release();
        block.Dispose();
    }

    [Fact]
    public void Persist_RecoverTakesOnlyThisDevicesWholeRegions()
    {
        DeviceDescription other = Devices.Make(name: "dev1");
        using (FileMemoryBackend mine = Backend(persist: true))
        using (FileMemoryBackend theirs = Backend(persist: true, device: other))
        {
            Allocate(mine, MiB, 1).Dispose();
            Allocate(theirs, MiB, 2).Dispose();
        }
        System.IO.File.WriteAllBytes(Path.Combine(_shm.Path, "vism-dev0-0000000000000003.region"), new byte[100]); // not whole pages
        System.IO.File.WriteAllText(Path.Combine(_shm.Path, "notes.txt"), "not a region");
        System.IO.File.WriteAllBytes(Path.Combine(_shm.Path, "vism-dev0-0000000000000000.region"), new byte[4096]); // token 0 is never valid

        using FileMemoryBackend restarted = Backend(persist: true);
        IReadOnlyList<RecoveredBlock> found = restarted.Recover();
        Assert.Equal([1UL], found.Select(r => r.Token));
        Assert.Equal(1, _counters.Get("memory.recover.skipped"));
        Assert.Equal(5, Directory.GetFiles(_shm.Path).Length); // nothing deleted that is not a temporary file
        foreach (RecoveredBlock r in found) r.Block.Dispose();
    }

    [Fact]
    public void Persist_RecoverIsCalledOnce()
    {
        using FileMemoryBackend backend = Backend(persist: true);
        backend.Recover();
        Assert.Throws<InvalidOperationException>(() => backend.Recover());
    }

    [Fact]
    public void WithoutPersist_RecoverFindsNothing_EvenWhenRegionFilesArePresent()
    {
        using (FileMemoryBackend backend = Backend(persist: true))
            Allocate(backend, MiB, 1).Dispose();
        using FileMemoryBackend plain = Backend();
        Assert.Empty(plain.Recover());
        Assert.Single(Directory.GetFiles(_shm.Path)); // and does not delete them either
    }

    [Fact]
    public void DeviceNamesAreEscapedInFileNames()
    {
        using FileMemoryBackend backend = Backend(persist: true, device: Devices.Make(name: "a/b c"), prefix: "p-");
        backend.Recover();
        using IMemoryBlock b = Allocate(backend, MiB, 0xAB);
        Assert.Equal(["p-a%2Fb%20c-00000000000000ab.region"], Directory.GetFiles(_shm.Path).Select(Path.GetFileName));
    }

    [Fact]
    public void RelativeDirectory_IsInsideTheHostsStateDirectory()
    {
        var options = new FileMemoryOptions { Directory = "regions" };
        Assert.Equal(Path.Combine(_shm.Path, "regions"), options.ResolveDirectory(Devices.Host(_shm.Path)));
        using var backend = new FileMemoryBackend(options, Devices.Make(), Devices.Host(_shm.Path), _counters, NullLogger<FileMemoryBackend>.Instance);
        Assert.True(Directory.Exists(Path.Combine(_shm.Path, "regions")));
    }
}
