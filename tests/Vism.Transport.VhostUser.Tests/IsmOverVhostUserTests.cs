using System.Collections.Concurrent;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Driver;
using Vism.Driver.VhostUser;
using Vism.Native;
using Vism.Testing;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>
/// A per-region IRQ event channel at the events seam (the real one is the Events.Irq plugin): binds
/// regions to vectors and fires the bound vector through the transport when a peer updates a region.
/// </summary>
internal sealed class VectorChannel : IEventChannel
{
    private readonly ConcurrentDictionary<ulong, int> _vectors = new();
    private IEventContext? _context;

    public ulong Features => Vism.Abstractions.Features.Mask(Vism.Abstractions.Features.IsmEventIrq);
    public int QueueCount => 0;
    public ConcurrentQueue<ulong> Updates { get; } = new();

    public void Activate(IEventContext context) => _context = context;

    public void Deactivate()
    {
        _context = null;
        _vectors.Clear();
    }

    public void OnRegionUpdated(ulong offset)
    {
        Updates.Enqueue(offset);
        if (_context is not null && _vectors.TryGetValue(offset, out int vector)) _context.SignalVector(vector);
    }

    public void OnRegionDetached(ulong offset) => _vectors.TryRemove(offset, out _);

    public bool TryBindVector(ulong offset, ulong vector, out string? failure)
    {
        failure = _context is null || vector >= (ulong)_context.VectorCount ? $"vector {vector} is not one of {_context?.VectorCount ?? 0}" : null;
        if (failure is null) _vectors[offset] = (int)vector;
        return failure is null;
    }

    public void OnQueueNotified(int queueIndex) { }

    public void Dispose() { }
}

/// <summary>Core's IsmHost with devices served by the vhost-user transport and driven by vism's
/// frontend and IsmClient: the whole stack over real sockets.</summary>
internal sealed class IsmRig : IAsyncDisposable
{
    public const ulong MiB = 1 << 20;
    public const int Vectors = 2;
    private readonly TempDir _dir = new("ism");
    private readonly EventLoop[] _loops = [new("ism-loop-0"), new("ism-loop-1")];
    private readonly List<IsmPeer> _peers = [];

    public IsmRig() => Host = new IsmHost(new IsmHostOptions { Gid = 0x1234 }, NullLoggerFactory.Instance);

    public IsmHost Host { get; }

    public IsmPeer Add(string name, bool connect = true, TimeSpan? notifyPollFast = null, TimeSpan? notifyPollSlow = null, int? loopIndex = null,
        IsmClientOptions? client = null)
    {
        EventLoop loop = _loops[loopIndex ?? _peers.Count % _loops.Length];
        DeviceDescription description = DeviceLayout.Compute(name, Virtio.IsmDeviceId, 16 * MiB, MiB, 1);
        var counters = new DeviceCounters();
        var events = new VectorChannel();
        IsmDevice device = Host.AddDevice(description, loop, new InMemoryBackend(64 * MiB), events, counters);
        var options = new VhostUserOptions { SocketPath = _dir[name + ".sock"], Vectors = Vectors, };
        options.NotifyPollFast = notifyPollFast ?? options.NotifyPollFast;
        options.NotifyPollSlow = notifyPollSlow ?? options.NotifyPollSlow;
        var host = new HostDescription { Gid = Host.Gid, StateDirectory = _dir.Path, SocketDirectory = _dir.Path };
        var log = new ListLogger<VhostUserTransport>();
        var transport = new VhostUserTransport(options, description, host, loop, counters, log);
        loop.InvokeAsync(() => transport.Start(device)).GetAwaiter().GetResult();
        var peer = new IsmPeer(device, transport, events, counters, log);
        _peers.Add(peer);
        if (connect) peer.Connect(client);
        return peer;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (IsmPeer p in _peers) await p.DisposeAsync();
        Host.Dispose();
        foreach (EventLoop l in _loops) l.Dispose();
        _dir.Dispose();
    }
}

internal sealed class IsmPeer(IsmDevice device, VhostUserTransport transport, VectorChannel events, DeviceCounters counters,
    ListLogger<VhostUserTransport> log) : IAsyncDisposable
{
    public ListLogger<VhostUserTransport> Log { get; } = log;

    /// <summary>The transport's log, for assertion messages.</summary>
    public string LogText => string.Join("\n", Log.Lines.Select(l => $"{l.Level}: {l.Message}"));

    public IsmDevice Device { get; } = device;
    public VhostUserTransport Transport { get; } = transport;
    public VectorChannel Events { get; } = events;
    public DeviceCounters Counters { get; } = counters;
    public GuestRam? Ram { get; private set; }
    public VhostUserFrontend? Frontend { get; private set; }
    public IsmClient? Client { get; private set; }
    public IsmClient C => Client!;

    /// <summary>Connects a frontend and starts a client (by default without the eventq).</summary>
    public void Connect(IsmClientOptions? client = null)
    {
        Ram = new GuestRam();
        Frontend = VhostUserFrontend.Connect(Transport.Endpoint, Ram, new VhostUserFrontendOptions { VectorCount = IsmRig.Vectors });
        Client = IsmClient.Start(Frontend, client ?? new IsmClientOptions { EventVq = false });
    }

    /// <summary>The frontend vanishes without resetting the device (a VMM killed).</summary>
    public void Crash()
    {
        Frontend?.Dispose();
        Ram?.Dispose();
        Client = null;
        Frontend = null;
        Ram = null;
    }

    public T OnLoop<T>(Func<T> work) => Device.Loop.InvokeAsync(work).WaitAsync(TimeSpan.FromSeconds(20)).GetAwaiter().GetResult();

    public async ValueTask DisposeAsync()
    {
        Client?.Dispose(); // resets the device, disposes the frontend
        Ram?.Dispose();
        await Transport.DisposeAsync();
    }
}

public sealed class IsmOverVhostUserTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task TwoDevicesShareARegionByTokenAndSeeEachOthersWrites()
    {
        await using var rig = new IsmRig();
        IsmPeer a = rig.Add("a");
        IsmPeer b = rig.Add("b");
        Assert.Equal(0x1234UL, a.C.Gid);
        Assert.NotEqual(a.C.DevId, b.C.DevId);

        AllocReply alloc = a.C.Alloc(IsmRig.MiB);
        Assert.True(alloc.Ok);
        AttachReply attach = b.C.Attach(alloc.Token);
        Assert.True(attach.Ok);
        Assert.Equal(1, a.Frontend!.MappingCount(ShmId.Regions));
        Assert.Equal(1, b.Frontend!.MappingCount(ShmId.Regions));

        "hello from a, through vhost-user"u8.CopyTo(a.C.Region(alloc.Offset, 64));
        Assert.Equal("hello from a, through vhost-user"u8.ToArray(), b.C.Region(attach.Offset, 32).ToArray());
        "reply from b"u8.CopyTo(b.C.Region(attach.Offset + 4096, 64));
        Assert.Equal("reply from b"u8.ToArray(), a.C.Region(alloc.Offset + 4096, 12).ToArray());

        Assert.Equal(IsmControl.AckOk, b.C.Detach(attach.Offset));
        Assert.Equal(0, b.Frontend.MappingCount(ShmId.Regions));
        Assert.Equal(IsmControl.AckOk, a.C.Detach(alloc.Offset));
        Assert.Equal(0, a.Frontend.MappingCount(ShmId.Regions));
        Assert.Equal(0, rig.Host.RegionCount);
    }

    [Fact]
    public async Task AWriteToTheNotifyWindowFiresTheVectorThePeerBoundToTheRegion()
    {
        await using var rig = new IsmRig();
        IsmPeer a = rig.Add("a");
        IsmPeer b = rig.Add("b");
        Assert.True(b.C.Driver.Has(Features.IsmEventIrq));
        AllocReply alloc = a.C.Alloc(IsmRig.MiB);
        AttachReply attach = b.C.Attach(alloc.Token);
        Assert.True(attach.Ok);
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(attach.Offset, 1));
        Assert.Equal(IsmControl.AckErr, b.C.EventVector(attach.Offset, IsmRig.Vectors)); // beyond the transport's vectors

        "update"u8.CopyTo(a.C.Region(alloc.Offset, 8));
        a.C.Notify(alloc.Offset);
        Assert.True(b.C.WaitVector(1, Wait), "the peer's vector did not fire");
        Assert.Equal([attach.Offset], b.Events.Updates.ToArray());
        Assert.False(b.C.WaitVector(0, TimeSpan.FromMilliseconds(100)));
        Assert.Empty(a.Events.Updates);

        // A second update after the poller went idle still arrives.
        Thread.Sleep(300);
        a.C.Notify(alloc.Offset);
        Assert.True(b.C.WaitVector(1, Wait), "the second update did not fire the vector");
    }

    [Fact]
    public async Task ANotifyFollowedAtOnceByADetachReachesThePeerBeforeTheDetach()
    {
        await using var rig = new IsmRig();
        // A 1 s poll interval makes the race certain: unless the NOTIFY window is scanned before
        // the control request is served, the DETACH below is served long before the poller would
        // see the notify slot, and the update is lost.
        IsmPeer a = rig.Add("a", notifyPollFast: TimeSpan.FromSeconds(1), notifyPollSlow: TimeSpan.FromSeconds(1));
        IsmPeer b = rig.Add("b");
        AllocReply alloc = a.C.Alloc(IsmRig.MiB);
        AttachReply attach = b.C.Attach(alloc.Token);
        Assert.True(attach.Ok);

        a.C.Notify(alloc.Offset);
        Assert.Equal(IsmControl.AckOk, a.C.Detach(alloc.Offset));
        // The update is delivered on b's loop, which may be another thread: wait for it (it never
        // comes if the notify was not routed before the DETACH freed A's slot).
        long deadline = Environment.TickCount64 + 5_000;
        while (b.Events.Updates.IsEmpty && Environment.TickCount64 < deadline) Thread.Sleep(10);
        Assert.Equal([attach.Offset], b.Events.Updates.ToArray());
        Assert.Empty(a.Events.Updates);
    }

    [Fact]
    public async Task AFrontendThatDiesReleasesItsAttachmentsAndTheDeviceIsServedAgain()
    {
        await using var rig = new IsmRig();
        IsmPeer a = rig.Add("a");
        IsmPeer b = rig.Add("b");
        AllocReply alloc = a.C.Alloc(IsmRig.MiB);
        Assert.True(b.C.Attach(alloc.Token).Ok);
        Assert.Equal(2, rig.Host.Snapshot().Regions.Single().References.Count);

        b.Crash();
        long deadline = Environment.TickCount64 + 20_000;
        while (rig.Host.Snapshot().Regions.Single().References.Count != 1 && Environment.TickCount64 < deadline) Thread.Sleep(10);
        Assert.Single(rig.Host.Snapshot().Regions.Single().References);
        Assert.False(b.OnLoop(() => b.Transport.IsConnected));

        // The same socket serves the next frontend with a clean device; in pair mode b may attach again.
        b.Connect();
        AttachReply again = b.C.Attach(alloc.Token);
        Assert.True(again.Ok);
        "after the restart"u8.CopyTo(a.C.Region(alloc.Offset, 32));
        Assert.Equal("after the restart"u8.ToArray(), b.C.Region(again.Offset, 17).ToArray());
    }

    [Fact]
    public async Task AGuestResetReleasesTheDevicesRegionsAndTheFrontendDropsItsMappings()
    {
        await using var rig = new IsmRig();
        IsmPeer a = rig.Add("a");
        AllocReply alloc = a.C.Alloc(IsmRig.MiB);
        Assert.True(alloc.Ok);
        a.Frontend!.WriteStatus(DeviceStatus.Reset); // as QEMU 11.1.3: a stop, no SET_STATUS 0
        Assert.Equal(0, a.Frontend.MappingCount(ShmId.Regions));
        // The driver starts again: a new controlq at base 0, so vism resets the device, which frees
        // the region; the next ALLOC gets the same offset and nothing stale is in the way.
        IsmClient again = IsmClient.Start(a.Frontend, new IsmClientOptions { EventVq = false });
        long deadline = Environment.TickCount64 + 20_000;
        while (rig.Host.RegionCount != 0 && Environment.TickCount64 < deadline) Thread.Sleep(10);
        Assert.Equal(0, rig.Host.RegionCount);
        AllocReply second = again.Alloc(IsmRig.MiB);
        Assert.True(second.Ok);
        Assert.Equal(alloc.Offset, second.Offset);
        Assert.Equal(0, a.Counters.Get("vhost-user.map-errors"));
    }
}
