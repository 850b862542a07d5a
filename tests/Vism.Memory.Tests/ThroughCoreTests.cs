using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Core;
using Vism.Driver;
using Vism.Memory.File;
using Vism.Memory.Hugetlb;
using Vism.Native;
using Vism.Testing;

namespace Vism.Memory.Tests;

/// <summary>
/// The plugins behind Core's real device model: a driver (IsmClient over the in-memory transport,
/// which maps every block's fd into its REGIONS window) fills the capacity with ALLOC until the
/// ack is ERR, and the host keeps serving.
/// </summary>
public sealed class ThroughCoreTests
{
    private const ulong MiB = Devices.MiB;
    private static readonly IsmClientOptions NoEvents = new() { EventVq = false, EventIrq = false };

    private delegate IMemoryBackend BackendFactory(DeviceDescription device, IDeviceCounters counters);

    [SkippableFact]
    public void File_AllocUntilErr_ThenDetachAndAllocAgain_ThePeerSeesWrites_AndTmpfsSpaceComesBack()
    {
        using PrivateMount tmpfs = PrivateMount.Tmpfs(64 * MiB);
        ulong start = tmpfs.Used;
        Exercise(MiB, regions: 4, (device, counters) => new FileMemoryBackend(
            new FileMemoryOptions { Directory = tmpfs.Path, Capacity = 4 * MiB }, device, Devices.Host(), counters,
            NullLogger<FileMemoryBackend>.Instance), offLoop: true);
        Assert.Equal(start, tmpfs.Used);
    }

    [SkippableFact]
    public void File_FullTmpfs_IsAnErrAck_AndTheHostKeepsServing()
    {
        using PrivateMount tmpfs = PrivateMount.Tmpfs(3 * MiB); // less than the capacity: the file system runs out first
        Exercise(MiB, regions: 3, (device, counters) => new FileMemoryBackend(
            new FileMemoryOptions { Directory = tmpfs.Path, Capacity = 8 * MiB }, device, Devices.Host(), counters,
            NullLogger<FileMemoryBackend>.Instance), expectedReason: "no space left", offLoop: true);
    }

    [SkippableFact]
    public void Hugetlb_AllocUntilErr_ThenDetachAndAllocAgain_AndThePeerSeesWrites()
    {
        const ulong page = 2 * MiB;
        Machine.RequireHugePages(4);
        Exercise(page, regions: 3, (device, counters) => new HugetlbMemoryBackend(
            new HugetlbMemoryOptions { Capacity = 3 * page }, device, Devices.Host(), counters,
            NullLogger<HugetlbMemoryBackend>.Instance));
    }

    [SkippableFact]
    public void Hugetlb_ClaimByFallocate_AllocUntilErr_OffTheLoop_AndThePeerSeesWrites()
    {
        const ulong page = 2 * MiB;
        Machine.RequireHugePages(4);
        Exercise(page, regions: 3, (device, counters) => new HugetlbMemoryBackend(
            new HugetlbMemoryOptions { Capacity = 3 * page, Claim = HugePageClaim.Fallocate }, device, Devices.Host(), counters,
            NullLogger<HugetlbMemoryBackend>.Instance), offLoop: true);
    }

    [SkippableFact]
    public void Hugetlb_FullMount_IsAnErrAck_AndTheHostKeepsServing()
    {
        const ulong page = 2 * MiB;
        Machine.RequireHugePages(4);
        using PrivateMount mount = PrivateMount.Hugetlbfs(page, 2 * page);
        Exercise(page, regions: 2, (device, counters) => new HugetlbMemoryBackend(
            new HugetlbMemoryOptions { Mount = mount.Path, Capacity = 8 * page }, device, Devices.Host(), counters,
            NullLogger<HugetlbMemoryBackend>.Instance), expectedReason: "is full");
    }

    [Fact]
    public void File_Persist_AHostRestartedAfterACrash_FindsTheRegionByItsToken_WithItsContents()
    {
        using var dir = new TempDir("vism-persist");
        DeviceDescription owner = DeviceLayout.Compute("owner", Virtio.IsmDeviceId, 16 * MiB, MiB, 1);
        DeviceDescription peer = DeviceLayout.Compute("peer", Virtio.IsmDeviceId, 16 * MiB, MiB, 1);
        FileMemoryBackend Persistent(DeviceDescription d, IDeviceCounters c) => new(
            new FileMemoryOptions { Directory = dir.Path, Persist = true }, d, Devices.Host(), c, NullLogger<FileMemoryBackend>.Instance);

        // First run: a driver allocates a region and writes into it; then the process dies: nothing
        // is released or reset (the objects are abandoned, their descriptors closed by finalizers).
        ulong token;
        var firstLoop = new EventLoop("memory-test-first-run");
        {
            var host = new IsmHost(new IsmHostOptions { Gid = 7 }, NullLoggerFactory.Instance);
            var counters = new DeviceCounters();
            IsmDevice device = host.AddDevice(owner, firstLoop, Persistent(owner, counters), null, counters);
            IsmClient client = IsmClient.Start(InMemoryTransport.StartFor(device), NoEvents);
            AllocReply reply = client.Alloc(MiB);
            Assert.True(reply.Ok);
            token = reply.Token;
            "persisted across the restart"u8.CopyTo(client.Region(reply.Offset, 64));
        }
        firstLoop.Dispose();

        // Second run: the owner's backend recovers the region under its token; a peer attaches it.
        using var loop = new EventLoop("memory-test-second-run");
        using var restarted = new IsmHost(new IsmHostOptions { Gid = 7 }, NullLoggerFactory.Instance);
        var ownerCounters = new DeviceCounters();
        var peerCounters = new DeviceCounters();
        using FileMemoryBackend memory = Persistent(owner, ownerCounters);
        using FileMemoryBackend peerMemory = Persistent(peer, peerCounters);
        IsmDevice ownerDevice = restarted.AddDevice(owner, loop, memory, null, ownerCounters);
        IsmDevice peerDevice = restarted.AddDevice(peer, loop, peerMemory, null, peerCounters);
        Assert.True(Assert.Single(restarted.Snapshot().Regions).Recovered);
        Assert.Equal(MiB, memory.Usage.Used);
        using (InMemoryTransport transport = InMemoryTransport.StartFor(peerDevice))
        using (IsmClient peerClient = IsmClient.Start(transport, NoEvents))
        {
            AttachReply attached = peerClient.Attach(token);
            Assert.True(attached.Ok, $"ATTACH ack {attached.Ack}");
            Assert.Equal("persisted across the restart", System.Text.Encoding.ASCII.GetString(peerClient.Region(attached.Offset, 28)));
        }
        restarted.RemoveDevice(peerDevice);
        restarted.RemoveDevice(ownerDevice);
    }

    [Fact]
    public void File_Persist_AGracefulStopKeepsARegionInUse_AndTheNextHostRecoversIt()
    {
        using var dir = new TempDir("vism-persist-stop");
        DeviceDescription owner = DeviceLayout.Compute("owner", Virtio.IsmDeviceId, 16 * MiB, MiB, 1);
        FileMemoryBackend Persistent(IDeviceCounters c) => new(
            new FileMemoryOptions { Directory = dir.Path, Persist = true }, owner, Devices.Host(), c, NullLogger<FileMemoryBackend>.Instance);

        ulong token;
        using (var loop = new EventLoop("memory-test-graceful"))
        {
            var counters = new DeviceCounters();
            using FileMemoryBackend memory = Persistent(counters);
            var host = new IsmHost(new IsmHostOptions { Gid = 7 }, NullLoggerFactory.Instance);
            IsmDevice device = host.AddDevice(owner, loop, memory, null, counters);
            using (IsmClient client = IsmClient.Start(InMemoryTransport.StartFor(device), NoEvents))
            {
                AllocReply reply = client.Alloc(MiB);
                Assert.True(reply.Ok);
                token = reply.Token;
                "kept over a graceful stop"u8.CopyTo(client.Region(reply.Offset, 64));
                // The host stops while the driver still holds the region: the region's last
                // reference goes during the stop, which must not release a persisted region.
                host.BeginShutdown();
            }
            host.Dispose();
            Assert.Equal(0, counters.Get("err.memory.release-failed"));
        }

        var again = new DeviceCounters();
        using FileMemoryBackend recovered = Persistent(again);
        RecoveredBlock block = Assert.Single(recovered.Recover());
        Assert.Equal(token, block.Token);
        using (block.Block)
        using (Mapping map = Mapping.Map(block.Block.Handle, block.Block.Offset, block.Block.Length))
            Assert.Equal("kept over a graceful stop", System.Text.Encoding.ASCII.GetString(map.Span(0, 25)));
    }

    /// <summary>Fills <paramref name="regions"/> regions of <paramref name="regionSize"/> until the
    /// ALLOC ack is ERR, checks a peer device attached to one sees the owner's writes, DETACHes one
    /// and ALLOCs again (zeroed), then removes the devices and checks every byte was given back.</summary>
    private static void Exercise(ulong regionSize, int regions, BackendFactory create, string? expectedReason = null, bool offLoop = false)
    {
        using var loop = new EventLoop("memory-test-loop");
        using var host = new IsmHost(new IsmHostOptions { Gid = 7 }, NullLoggerFactory.Instance);
        var counters = new DeviceCounters();
        var peerCounters = new DeviceCounters();
        DeviceDescription owner = DeviceLayout.Compute("owner", Virtio.IsmDeviceId, 16 * regionSize, regionSize, 1);
        DeviceDescription peer = DeviceLayout.Compute("peer", Virtio.IsmDeviceId, 16 * regionSize, regionSize, 1);
        using IMemoryBackend memory = create(owner, counters);
        using IMemoryBackend peerMemory = create(peer, peerCounters);
        IsmDevice device = host.AddDevice(owner, loop, memory, null, counters);
        IsmDevice peerDevice = host.AddDevice(peer, loop, peerMemory, null, peerCounters);
        try
        {
            using (InMemoryTransport transport = InMemoryTransport.StartFor(device))
            using (IsmClient client = IsmClient.Start(transport, NoEvents))
            using (InMemoryTransport peerTransport = InMemoryTransport.StartFor(peerDevice))
            using (IsmClient peerClient = IsmClient.Start(peerTransport, NoEvents))
            {
                var allocated = new List<AllocReply>();
                AllocReply reply;
                while ((reply = client.Alloc(regionSize)).Ok)
                {
                    allocated.Add(reply);
                    Assert.True(allocated.Count <= regions, $"ALLOC kept succeeding past {regions} regions");
                    Assert.True(client.Region(reply.Offset, (int)regionSize).IndexOfAnyExcept((byte)0) < 0, "a new region was not zeroed");
                    client.Region(reply.Offset, (int)regionSize).Fill((byte)allocated.Count);
                }
                Assert.Equal(IsmControl.AckErr, reply.Ack);
                Assert.Equal(regions, allocated.Count);
                Assert.Equal(1, counters.Get("err.alloc.no-memory"));
                Assert.Equal((ulong)regions * regionSize, memory.Usage.Used);
                if (expectedReason is not null)
                    Assert.Equal(1, counters.Get("memory.alloc-failed.claim-failed"));

                // A peer device maps the same backing and sees what the owner wrote, both ways.
                AttachReply attached = peerClient.Attach(allocated[0].Token);
                Assert.True(attached.Ok, $"ATTACH ack {attached.Ack}");
                Assert.True(peerClient.Region(attached.Offset, (int)regionSize).IndexOfAnyExcept((byte)1) < 0);
                peerClient.Region(attached.Offset, 4).Fill(0xCD);
                Assert.True(client.Region(allocated[0].Offset, 4).IndexOfAnyExcept((byte)0xCD) < 0);

                // The host still serves: DETACH frees a region, and ALLOC works again, zeroed.
                Assert.Equal(IsmControl.AckOk, client.Detach(allocated[1].Offset));
                Settle(loop);
                Assert.Equal((ulong)(regions - 1) * regionSize, memory.Usage.Used);
                AllocReply again = client.Alloc(regionSize);
                Assert.True(again.Ok, $"ALLOC after DETACH: ack {again.Ack}");
                Assert.True(client.Region(again.Offset, (int)regionSize).IndexOfAnyExcept((byte)0) < 0, "a reused region was not zeroed");
                Assert.False(client.Alloc(regionSize).Ok); // full again
                Assert.Equal(2, counters.Get("err.alloc.no-memory"));

                // Every ALLOC reached the backend off the device's loop, or none did.
                Assert.Equal(memory.AllocatesOffLoop, offLoop);
                Assert.Equal(offLoop ? regions + 3 : 0, counters.Get("alloc.off-loop"));
            }
        }
        finally
        {
            host.RemoveDevice(peerDevice);
            host.RemoveDevice(device);
            Settle(loop);
        }
        Assert.Equal(0UL, memory.Usage.Used);
        Assert.Equal((ulong)regions * regionSize, memory.Usage.HighWater);
    }

    private static void Settle(EventLoop loop)
    {
        for (int i = 0; i < 3; i++)
            loop.InvokeAsync(() => { }).WaitAsync(TimeSpan.FromSeconds(30)).GetAwaiter().GetResult();
    }
}
