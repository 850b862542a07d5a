using System.Collections.Concurrent;
using Microsoft.Win32.SafeHandles;
using Vism.Core.Registry;

namespace Vism.Core.Tests;

/// <summary>The host registry at scale and under concurrency; tokens; recovered regions; snapshots.</summary>
public sealed class RegistryTests
{
    [Fact]
    public void OneHundredThousandLiveRegionsAcrossAThousandDevicesAreAllFoundByToken()
    {
        using var rig = new Rig(SharingMode.Pair, loops: 2);
        const int devices = 1000, perDevice = 100;
        var peers = new Peer[devices];
        for (int i = 0; i < devices; i++)
            peers[i] = rig.AddDevice($"d{i}", window: 256 * Rig.MiB);
        var tokens = new ulong[devices * perDevice];
        var blocks = new CountingBlock[tokens.Length];
        for (int d = 0; d < devices; d++)
            for (int s = 0; s < perDevice; s++)
            {
                int n = d * perDevice + s;
                tokens[n] = rig.Host.NewToken();
                blocks[n] = new CountingBlock();
                rig.Host.CreateRegion(peers[d].Device, s, tokens[n], blocks[n], 4096);
            }
        Assert.Equal(devices * perDevice, rig.Host.RegionCount);
        Assert.Equal(tokens.Length, tokens.Distinct().Count());
        Assert.DoesNotContain(0UL, tokens);

        // Every region is found by its token: the next device attaches each one.
        var regions = new Region[tokens.Length];
        for (int n = 0; n < tokens.Length; n++)
        {
            IsmDevice attacher = peers[(n / perDevice + 1) % devices].Device;
            Assert.Null(rig.Host.TryAttach(attacher, perDevice + n % perDevice, tokens[n], out Region? region, out bool writable));
            Assert.True(writable);
            Assert.Equal(tokens[n], region!.Token);
            Assert.Same(blocks[n], region.Block);
            regions[n] = region;
        }
        Assert.Equal("attach.unknown-token", rig.Host.TryAttach(peers[0].Device, 250, Unused(tokens), out _, out _)?.Counter);

        HostSnapshot snapshot = rig.Host.Snapshot();
        Assert.Equal(devices * perDevice, snapshot.Regions.Count);
        Assert.All(snapshot.Regions, r => Assert.Equal(2, r.References.Count));

        // Releasing both references frees each region exactly once, on its home device's loop.
        for (int n = 0; n < tokens.Length; n++)
        {
            rig.Host.Release(regions[n], peers[n / perDevice].Device, n % perDevice, detach: true);
            rig.Host.Release(regions[n], peers[(n / perDevice + 1) % devices].Device, perDevice + n % perDevice, detach: true);
        }
        foreach (Peer p in peers.Take(rig.Loops.Length))
            p.Settle();
        Assert.Equal(0, rig.Host.RegionCount);
        Assert.All(blocks, b => Assert.Equal((1, 1), (b.Released, b.Disposed)));
        Assert.Equal("attach.unknown-token", rig.Host.TryAttach(peers[0].Device, 0, tokens[0], out _, out _)?.Counter);
    }

    private static ulong Unused(ulong[] tokens)
    {
        var set = new HashSet<ulong>(tokens);
        ulong t = 1;
        while (set.Contains(t)) t++;
        return t;
    }

    [Fact]
    public void ConcurrentAllocAttachDetachOnManyLoopsLeavesAConsistentRegistry()
    {
        using var rig = new Rig(SharingMode.Multi, loops: 3);
        Peer[] peers = [.. Enumerable.Range(0, 6).Select(i => rig.AddClient($"p{i}"))];
        var published = new ConcurrentBag<ulong>();
        var failures = new ConcurrentQueue<string>();

        Parallel.For(0, peers.Length, new ParallelOptions { MaxDegreeOfParallelism = peers.Length }, i =>
        {
            var random = new Random(i);
            IsmClient c = peers[i].C;
            var mine = new List<ulong>();
            for (int step = 0; step < 150; step++)
            {
                int action = random.Next(3);
                if (action == 0 || mine.Count == 0)
                {
                    AllocReply r = c.Alloc(4096);
                    if (r.Ok) { mine.Add(r.Offset); published.Add(r.Token); }
                    else if (mine.Count < peers[i].Device.Description.MaxRegions) failures.Enqueue($"alloc failed at {step}");
                }
                else if (action == 1 && !published.IsEmpty)
                {
                    ulong token = published.ElementAt(random.Next(published.Count));
                    AttachReply r = c.Attach(token);
                    if (r.Ok) mine.Add(r.Offset);
                }
                else
                {
                    int at = random.Next(mine.Count);
                    if (c.Detach(mine[at]) != IsmControl.AckOk) failures.Enqueue($"detach of 0x{mine[at]:x} failed");
                    mine.RemoveAt(at);
                }
            }
        });
        Assert.Empty(failures);

        // Every reference the registry holds belongs to a slot its device really uses.
        HostSnapshot snapshot = rig.Host.Snapshot();
        int references = snapshot.Regions.Sum(r => r.References.Count);
        Assert.Equal(peers.Sum(p => p.Device.RegionsInUse), references);
        Assert.All(snapshot.Regions, r => Assert.NotEmpty(r.References));
        Assert.All(snapshot.Regions, r => Assert.Equal(r.References.Count, r.References.Select(x => x.DevId).Distinct().Count()));

        // Resetting every device frees everything.
        foreach (Peer p in peers)
            p.T.WriteStatus(DeviceStatus.Reset);
        foreach (Peer p in peers)
            p.Settle();
        Assert.Equal(0, rig.Host.RegionCount);
        Assert.All(peers, p => Assert.Equal(0UL, p.Memory.Usage.Used));
    }

    [Fact]
    public void InPairModeTwoDevicesRacingToAttachGetExactlyOneSuccess()
    {
        using var rig = new Rig(SharingMode.Pair, loops: 3);
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Peer c = rig.AddClient("c");
        for (int round = 0; round < 40; round++)
        {
            AllocReply region = a.C.Alloc(4096);
            using var start = new Barrier(2);
            AttachReply rb = default, rc = default;
            Parallel.Invoke(
                () => { start.SignalAndWait(); rb = b.C.Attach(region.Token); },
                () => { start.SignalAndWait(); rc = c.C.Attach(region.Token); });
            Assert.True(rb.Ok ^ rc.Ok, $"round {round}: b {rb.Ack}, c {rc.Ack}");
            Assert.Equal(IsmControl.AckOk, a.C.Detach(region.Offset));
            Assert.Equal(IsmControl.AckOk, rb.Ok ? b.C.Detach(rb.Offset) : c.C.Detach(rc.Offset));
        }
        Assert.Equal(0, rig.Host.RegionCount);
    }

    [Fact]
    public void TokensAreNever0NeverRepeatAndDifferBetweenRegistries()
    {
        using var one = new TokenSequence();
        using var two = new TokenSequence();
        var seen = new HashSet<ulong>();
        var firsts = new List<ulong>();
        for (int i = 0; i < 250_000; i++)
        {
            ulong t = one.Next();
            Assert.NotEqual(0UL, t);
            Assert.True(seen.Add(t));
            if (i <= 1000) firsts.Add(t);
        }
        var other = Enumerable.Range(0, 1000).Select(_ => two.Next()).ToArray();
        Assert.True(other.Count(seen.Contains) < 2);
        // Not a counter: consecutive tokens differ in about half their bits.
        double bits = firsts.Zip(firsts.Skip(1), (x, y) => (double)ulong.PopCount(x ^ y)).Average();
        Assert.InRange(bits, 24, 40);
    }

    [Fact]
    public void RecoveredRegionsAreAttachableByTokenAndFreedAfterTheirLastDetach()
    {
        using var rig = new Rig();
        var backend = new Vism.Core.InMemory.InMemoryBackend(64 * Rig.MiB);
        backend.AddRecoverable(0x5eed_0000_0000_0001, "persisted"u8);
        backend.AddRecoverable(0, "bad"u8);
        DeviceDescription description = DeviceLayout.Compute("home", Virtio.IsmDeviceId, 16 * Rig.MiB, Rig.MiB, 1);
        var counters = new DeviceCounters();
        IsmDevice home = rig.Host.AddDevice(description, rig.Loops[0], backend, RecordingEventChannel.Irq(), counters);
        Assert.Equal(1, counters.Get("err.recover.bad-token"));
        Assert.Equal(8192UL, backend.Usage.Used);
        RegionSnapshot recovered = rig.Host.Snapshot().Regions.Single();
        Assert.True(recovered.Recovered);
        Assert.Equal(0UL, recovered.OwnerDevId);
        Assert.Equal(home.DevId, recovered.HomeDevId);
        Assert.Empty(recovered.References);

        Peer b = rig.AddClient("b");
        AttachReply r = b.C.Attach(0x5eed_0000_0000_0001);
        Assert.True(r.Ok);
        Assert.Equal("persisted"u8.ToArray(), b.C.Region(r.Offset, 9).ToArray());
        // Its first attacher manages it.
        Assert.Equal(IsmControl.AckOk, b.C.Grant(r.Offset, 0, IsmPermissions.Read | IsmPermissions.Attach));
        Assert.Equal(b.Device.DevId, rig.Host.Snapshot().Regions.Single().OwnerDevId);

        Assert.Equal(IsmControl.AckOk, b.C.Detach(r.Offset));
        Rig.Settle(home.Loop);
        Assert.Equal(0, rig.Host.RegionCount);
        Assert.Equal(4096UL, backend.Usage.Used); // released; what remains is the refused block, which is only disposed
        rig.Host.RemoveDevice(home);
    }

    [Fact]
    public void UnattachedRecoveredRegionsSurviveAResetAndAreForgottenButKeptWhenTheirDeviceGoes()
    {
        using var rig = new Rig();
        var backend = new Vism.Core.InMemory.InMemoryBackend(64 * Rig.MiB);
        backend.AddRecoverable(42, "keep me"u8);
        DeviceDescription description = DeviceLayout.Compute("home", Virtio.IsmDeviceId, 16 * Rig.MiB, Rig.MiB, 1);
        IsmDevice home = rig.Host.AddDevice(description, rig.Loops[0], backend, null, new DeviceCounters());
        Rig.Run(home.Loop, home.Reset);
        Assert.Equal(1, rig.Host.RegionCount);

        rig.Host.RemoveDevice(home);
        Assert.Equal(0, rig.Host.RegionCount);
        Assert.Equal(4096UL, backend.Usage.Used); // disposed, not released: the persisted copy stays
    }

    [Fact]
    public void ARecoveredTokenAlreadyLiveIsRefused()
    {
        using var rig = new Rig();
        var first = new Vism.Core.InMemory.InMemoryBackend(Rig.MiB);
        var second = new Vism.Core.InMemory.InMemoryBackend(Rig.MiB);
        first.AddRecoverable(7, "one"u8);
        second.AddRecoverable(7, "two"u8);
        DeviceDescription d1 = DeviceLayout.Compute("one", Virtio.IsmDeviceId, 16 * Rig.MiB, Rig.MiB, 1);
        var counters = new DeviceCounters();
        rig.Host.AddDevice(d1, rig.Loops[0], first, null, new DeviceCounters());
        rig.Host.AddDevice(d1 with { Name = "two" }, rig.Loops[1], second, null, counters);
        Assert.Equal(1, rig.Host.RegionCount);
        Assert.Equal(1, counters.Get("err.recover.bad-token"));
        Assert.Throws<ArgumentException>(() => rig.Host.AddDevice(d1, rig.Loops[0], first, null, new DeviceCounters()));
    }

    [Fact]
    public void RemovingADeviceReleasesWhatItHoldsAndFreesItsDevidName()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = Rig.Share(a, b).Region;
        Assert.True(b.C.Alloc(4096).Ok);

        rig.Host.RemoveDevice(b.Device);
        a.Settle();
        b.Settle();
        Assert.Equal(1, rig.Host.DeviceCount);
        Assert.Single(rig.Host.Snapshot().Regions.Single().References);
        Assert.Equal(0UL, b.Memory.Usage.Used);
        Assert.NotEqual(b.Device.DevId, rig.AddDevice("b").Device.DevId);
    }

    [Fact]
    public void SnapshotShowsDevicesRegionsReferencesCountersAndMemory()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("alpha");
        Peer b = rig.AddClient("beta");
        Assert.True(b.C.Alloc(4096).Ok);
        AllocReply region = a.C.Alloc(100_000);
        ulong atB = b.C.Attach(region.Token).Offset;
        a.Settle();

        HostSnapshot s = rig.Host.Snapshot();
        Assert.Equal(0x00c0ffee_0000_0001UL, s.Gid);
        Assert.Equal(SharingMode.Pair, s.Sharing);
        Assert.Equal(["alpha", "beta"], s.Devices.Select(d => d.Name));
        DeviceSnapshot alpha = s.Devices[0];
        Assert.Equal(a.Device.DevId, alpha.DevId);
        Assert.True(alpha.Connected);
        Assert.Equal(DeviceStatus.DriverOk, alpha.Status & DeviceStatus.DriverOk);
        Assert.True(Features.Has(alpha.NegotiatedFeatures, Features.Version1));
        Assert.Equal(1, alpha.RegionsInUse);
        Assert.Equal(102_400UL, alpha.Memory.Used);
        Assert.Equal(1, alpha.Counters["ctrl.alloc.ok"]);

        RegionSnapshot shared = s.Regions.Single(r => r.OwnerDevId == a.Device.DevId);
        Assert.Equal(100_000UL, shared.Size);
        Assert.Equal(102_400UL, shared.Length);
        Assert.Equal(Rig.Hint(region.Token), shared.TokenHint);
        Assert.DoesNotContain(region.Token.ToString("x"), shared.TokenHint);
        Assert.Equal([new RegionReference(a.Device.DevId, region.Offset), new RegionReference(b.Device.DevId, atB)], shared.References);
    }

    /// <summary>A block without memory that counts what the registry does with it.</summary>
    private sealed class CountingBlock : IMemoryBlock
    {
        public int Released;
        public int Disposed;
        public SafeFileHandle Handle { get; } = new(IntPtr.Zero, ownsHandle: false);
        public ulong Offset => 0;
        public ulong Length => 4096;
        public void Release() => Interlocked.Increment(ref Released);
        public void Dispose() => Interlocked.Increment(ref Disposed);
    }
}
