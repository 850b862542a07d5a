using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Mmio;
using Vism.Native;
using Vism.Testing;

namespace Vism.Transport.Mmio.Tests;

/// <summary>The full ISM flow with Core's device behind the MMIO transport, driven by the Driver's
/// MMIO client over real Unix sockets, exactly as a VMM forwarding a Linux guest's accesses would.</summary>
public sealed class IsmOverMmioTests : IAsyncDisposable
{
    private const ulong MiB = 1 << 20;
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(20);

    private readonly TempDir _dir = new("vmmio-e2e");
    private readonly EventLoop[] _loops = [new("e2e-loop-0"), new("e2e-loop-1")];
    private readonly IsmHost _host = new(new IsmHostOptions { Gid = 0x5eed }, NullLoggerFactory.Instance);
    private readonly List<Node> _nodes = [];

    private sealed record Node(IsmDevice Device, DeviceCounters Counters, MmioTransport Transport, TestEvents Events, InMemoryBackend Memory);

    private async Task<Node> AddDevice(string name, bool eventq = false)
    {
        DeviceDescription description = DeviceLayout.Compute(name, Virtio.IsmDeviceId, 16 * MiB, MiB, 1);
        var memory = new InMemoryBackend(64 * MiB);
        var counters = new DeviceCounters();
        var events = new TestEvents(eventq);
        EventLoop loop = _loops[_nodes.Count % _loops.Length];
        IsmDevice device = _host.AddDevice(description, loop, memory, events, counters);
        var host = new HostDescription { Gid = _host.Gid, StateDirectory = _dir.Path, SocketDirectory = _dir.Path };
        var transport = new MmioTransport(new MmioOptions { Vectors = 4 }, description, host, loop, counters, NullLogger<MmioTransport>.Instance);
        await loop.InvokeAsync(() => transport.Start(device));
        var node = new Node(device, counters, transport, events, memory);
        _nodes.Add(node);
        return node;
    }

    private static Task<T> On<T>(Node n, Func<T> f) => n.Device.Loop.InvokeAsync(f);

    /// <summary>A allocates a region, B attaches it, and each of <paramref name="updates"/> notifies
    /// by A reaches B as one eventq event naming the region.</summary>
    private static void ShareAndBounceUpdates(IsmClient guestA, IsmClient guestB, int updates)
    {
        AllocReply alloc = guestA.Alloc(4096);
        AttachReply attach = guestB.Attach(alloc.Token);
        Assert.True(attach.Ok);
        for (int i = 0; i < updates; i++)
        {
            guestA.Notify(alloc.Offset);
            Assert.Equal([attach.Offset], guestB.WaitEvent(Generous));
        }
    }

    [Fact]
    public async Task TwoGuestsShareARegionOverMmioFromProbeToDetach()
    {
        Node a = await AddDevice("mmio-a");
        Node b = await AddDevice("mmio-b");
        using MmioVmmClient vmmA = MmioVmmClient.Connect(a.Transport.Endpoint);
        using MmioVmmClient vmmB = MmioVmmClient.Connect(b.Transport.Endpoint);

        // Probe and start each device as Linux's virtio_mmio + a virtio driver would.
        using IsmClient guestA = IsmClient.Start(vmmA);
        using IsmClient guestB = IsmClient.Start(vmmB);
        Assert.Equal(Virtio.IsmDeviceId, vmmA.DeviceId);
        Assert.True(guestA.Driver.Has(Features.IsmEventIrq));
        Assert.Equal(0x5eedul, guestA.Gid);
        Assert.Equal(a.Device.DevId, guestA.DevId);
        Assert.NotEqual(guestA.DevId, guestB.DevId);
        Assert.Equal(MiB, guestA.RegionSize);

        // ALLOC on A: the device asks A's VMM to map the region into A's REGIONS window.
        AllocReply alloc = guestA.Alloc(64 * 1024);
        Assert.True(alloc.Ok);
        Assert.Equal(1, vmmA.MappingCount);

        // ATTACH from B with the token: B's VMM maps the same memory.
        AttachReply attach = guestB.Attach(alloc.Token);
        Assert.True(attach.Ok);
        Assert.Equal(1, vmmB.MappingCount);

        // Writes through one guest's window are read through the other's.
        "hello over mmio"u8.CopyTo(guestA.Region(alloc.Offset, 64));
        Assert.Equal("hello over mmio"u8.ToArray(), guestB.Region(attach.Offset, 15).ToArray());
        "and back"u8.CopyTo(guestB.Region(attach.Offset + 4096, 64));
        Assert.Equal("and back"u8.ToArray(), guestA.Region(alloc.Offset + 4096, 8).ToArray());

        // B binds the region to vector 2; A's trapped notify write fires it in B's VMM.
        Assert.Equal(IsmControl.AckOk, guestB.EventVector(attach.Offset, 2));
        guestA.Notify(alloc.Offset);
        Assert.True(vmmB.WaitVector(2, Generous), "B's vector 2 fired");
        Assert.False(vmmA.WaitVector(2, TimeSpan.FromMilliseconds(50)), "the writer is not notified");

        // DETACH by both: the windows are unmapped and the region is freed.
        Assert.Equal(IsmControl.AckOk, guestA.Detach(alloc.Offset));
        Assert.Equal(0, vmmA.MappingCount);
        Assert.Equal(IsmControl.AckOk, guestB.Detach(attach.Offset));
        Assert.Equal(0, vmmB.MappingCount);
        Assert.Equal(0, _host.RegionCount);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task AnUpdateReachesThePeerByDoorbellOrByNotifyMessage(bool doorbells)
    {
        Node a = await AddDevice("mmio-bell-a");
        Node b = await AddDevice("mmio-bell-b");
        using MmioVmmClient vmmA = MmioVmmClient.Connect(a.Transport.Endpoint, options: new MmioVmmOptions { NotifyDoorbells = doorbells });
        using MmioVmmClient vmmB = MmioVmmClient.Connect(b.Transport.Endpoint);
        using IsmClient guestA = IsmClient.Start(vmmA);
        using IsmClient guestB = IsmClient.Start(vmmB);
        AllocReply alloc = guestA.Alloc(4096);
        AttachReply attach = guestB.Attach(alloc.Token);
        Assert.True(attach.Ok);
        Assert.Equal(IsmControl.AckOk, guestB.EventVector(attach.Offset, 1));

        for (int i = 0; i < 3; i++)
        {
            guestA.Notify(alloc.Offset);
            Assert.True(vmmB.WaitVector(1, Generous), $"update {i} fired B's vector");
        }
        Assert.Equal(doorbells ? 1 : 0, vmmA.DoorbellCount);
        Assert.Equal(3, a.Counters.Get("notify.writes")); // counted before the update is routed, so before B sees it
        // The doorbell stays wired across DETACH and a new region in the same slot.
        Assert.Equal(IsmControl.AckOk, guestA.Detach(alloc.Offset));
        AllocReply again = guestA.Alloc(4096);
        Assert.Equal(alloc.Offset, again.Offset);
        AttachReply reattach = guestB.Attach(again.Token);
        Assert.Equal(IsmControl.AckOk, guestB.EventVector(reattach.Offset, 1));
        guestA.Notify(again.Offset);
        Assert.True(vmmB.WaitVector(1, Generous), "the update after re-ALLOC fired B's vector");
        Assert.Equal(doorbells ? 1 : 0, vmmA.DoorbellCount);
    }

    [Fact]
    public async Task AVectorWiredAsThePeersDoorbellIsRefusedSoNoNotifyLoopStarts()
    {
        // The attack: one VMM serves both guests; it gives A's per-region vector and B's doorbell
        // for the shared region the same eventfd. One signal of it is a notify by B, which fires
        // A's vector, which is B's doorbell: another notify by B, and so on, each hop a turn of
        // vism's loop, for ever (before the guard: 69,192 notifies in the first second).
        Node a = await AddDevice("mmio-loop-a");
        Node b = await AddDevice("mmio-loop-b");
        using MmioVmmClient vmmA = MmioVmmClient.Connect(a.Transport.Endpoint);
        using MmioVmmClient vmmB = MmioVmmClient.Connect(b.Transport.Endpoint);
        using IsmClient guestA = IsmClient.Start(vmmA);
        using IsmClient guestB = IsmClient.Start(vmmB);
        AllocReply alloc = guestA.Alloc(4096);
        AttachReply attach = guestB.Attach(alloc.Token);
        Assert.Equal(IsmControl.AckOk, guestA.EventVector(alloc.Offset, 1));

        using EventFd shared = EventFd.Create();
        Assert.Equal(MmioStatus.Ok, vmmA.Call(MmioMessageType.SetIrqFd, new SetIrqFd(1 + 1).Encode(), [shared.Handle]).Header.Status);
        ulong slotB = attach.Offset / guestB.RegionSize * guestB.NotifySize;
        Assert.Equal(MmioStatus.BadFd, vmmB.Call(MmioMessageType.SetNotifyFd, new SetNotifyFd(slotB).Encode(), [shared.Handle]).Header.Status);

        shared.Signal(); // what would have started the loop: it is no doorbell
        await Task.Delay(200);
        Assert.Equal(0, b.Counters.Get("notify.writes"));

        // B's notify (its own doorbell, wired by the client) fires A's vector once, and that is all.
        shared.Drain();
        guestB.Notify(attach.Offset);
        Assert.Equal(1ul, shared.Wait(Generous));
        await Task.Delay(200);
        Assert.Equal(1, b.Counters.Get("notify.writes"));
        Assert.Equal(1, a.Counters.Get("events.updates"));
    }

    [Fact]
    public async Task AnUpdateArrivesOnThePeersEventqThroughItsSecondMmioQueue()
    {
        Node a = await AddDevice("mmio-vq-a", eventq: true);
        Node b = await AddDevice("mmio-vq-b", eventq: true);
        using MmioVmmClient vmmA = MmioVmmClient.Connect(a.Transport.Endpoint);
        using MmioVmmClient vmmB = MmioVmmClient.Connect(b.Transport.Endpoint);
        using IsmClient guestA = IsmClient.Start(vmmA);
        using IsmClient guestB = IsmClient.Start(vmmB);
        Assert.True(guestB.Driver.Has(Features.IsmEventVq));
        Assert.Equal(2, guestB.Driver.Queues.Count);

        AllocReply alloc = guestA.Alloc(4096);
        AttachReply attach = guestB.Attach(alloc.Token);
        Assert.True(attach.Ok);
        guestA.Notify(alloc.Offset);

        IReadOnlyList<ulong>? offsets = guestB.WaitEvent(Generous);
        Assert.NotNull(offsets);
        Assert.Equal([attach.Offset], offsets);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task EventqUpdatesWakeASleepingPeerOnItsQueueCallEventfdOrOnTheStandardLine(bool queueCalls)
    {
        Node a = await AddDevice("mmio-call-a", eventq: true);
        Node b = await AddDevice("mmio-call-b", eventq: true);
        using MmioVmmClient vmmA = MmioVmmClient.Connect(a.Transport.Endpoint);
        using MmioVmmClient vmmB = MmioVmmClient.Connect(b.Transport.Endpoint, options: new MmioVmmOptions { QueueCallFds = queueCalls });
        using IsmClient guestA = IsmClient.Start(vmmA);
        // No spin: every wait sleeps, so every event has to wake B through its VMM.
        using IsmClient guestB = IsmClient.Start(vmmB, new IsmClientOptions { SpinBeforeBlock = TimeSpan.Zero });
        Assert.Equal(queueCalls, vmmB.HasQueueCall(Virtio.EventQueue));
        Assert.Equal(queueCalls, vmmB.HasQueueCall(0));
        ShareAndBounceUpdates(guestA, guestB, 5);
        // With call eventfds the device leaves InterruptStatus to the VMM: bit 0 is never set (without
        // them the VMM's interrupt thread reads and acknowledges it for every event, meanwhile).
        if (queueCalls)
            Assert.Equal(0u, vmmB.ReadRegister(MmioRegister.InterruptStatus) & MmioRegister.InterruptUsedBuffer);
    }

    [Fact]
    public async Task AgainstADeviceFromBeforeDoorbellsAndCallEventfdsTheClientKeepsNotifyMessagesAndLineZero()
    {
        // Both devices play a vism that does not know SET_NOTIFY_FD and SET_QUEUE_CALL_FD: the
        // clients ask once each, hear UNKNOWN_TYPE, and go on with NOTIFY messages and line 0 +
        // InterruptStatus. Updates still reach a peer that sleeps on its eventq.
        Node a = await AddDevice("mmio-old-a", eventq: true);
        Node b = await AddDevice("mmio-old-b", eventq: true);
        MmioMessageType[] newer = [MmioMessageType.SetNotifyFd, MmioMessageType.SetQueueCallFd];
        using var oldA = new OlderDeviceProxy(a.Transport.Endpoint, _dir["old-a.sock"], newer);
        using var oldB = new OlderDeviceProxy(b.Transport.Endpoint, _dir["old-b.sock"], newer);
        using MmioVmmClient vmmA = MmioVmmClient.Connect(oldA.Path);
        using MmioVmmClient vmmB = MmioVmmClient.Connect(oldB.Path);
        using IsmClient guestA = IsmClient.Start(vmmA);
        using IsmClient guestB = IsmClient.Start(vmmB, new IsmClientOptions { SpinBeforeBlock = TimeSpan.Zero });
        Assert.False(vmmB.HasQueueCall(0));
        Assert.False(vmmB.HasQueueCall(Virtio.EventQueue));
        Assert.Equal(1, oldB.Refused(MmioMessageType.SetQueueCallFd)); // asked for the first queue only

        ShareAndBounceUpdates(guestA, guestB, 4);
        Assert.Equal(0, vmmA.DoorbellCount);
        Assert.Equal(1, oldA.Refused(MmioMessageType.SetNotifyFd)); // asked at the first write only
        Assert.Equal(4, a.Counters.Get("notify.writes"));
    }

    [Fact]
    public async Task AVmmThatDiesReleasesItsAttachmentsAndThePeerKeepsWorking()
    {
        Node a = await AddDevice("mmio-c");
        Node b = await AddDevice("mmio-d");
        using MmioVmmClient vmmB = MmioVmmClient.Connect(b.Transport.Endpoint);
        using IsmClient guestB = IsmClient.Start(vmmB);
        AllocReply alloc;
        using (MmioVmmClient vmmA = MmioVmmClient.Connect(a.Transport.Endpoint))
        {
            using IsmClient guestA = IsmClient.Start(vmmA);
            alloc = guestA.Alloc(4096);
            Assert.True(guestB.Attach(alloc.Token).Ok);
            Assert.Equal(1, await On(a, () => a.Device.RegionsInUse));
        } // A's VMM goes away with the region attached

        await WaitUntil(a, () => a.Device.RegionsInUse == 0 && !a.Device.IsConnected, "A's attachments were released");
        Assert.Equal(1, _host.RegionCount); // B still holds it
        AllocReply own = guestB.Alloc(4096);
        Assert.True(own.Ok, "B keeps working");

        // A's socket is served again: a new VMM can probe and use the device.
        using MmioVmmClient again = MmioVmmClient.Connect(a.Transport.Endpoint);
        using IsmClient guestA2 = IsmClient.Start(again);
        Assert.True(guestA2.Alloc(4096).Ok);
    }

    [Fact]
    public async Task AGuestResetDropsItsMappingsFromTheVmmsWindow()
    {
        Node a = await AddDevice("mmio-e");
        using MmioVmmClient vmm = MmioVmmClient.Connect(a.Transport.Endpoint);
        using IsmClient guest = IsmClient.Start(vmm);
        Assert.True(guest.Alloc(4096).Ok);
        Assert.True(guest.Alloc(4096).Ok);
        Assert.Equal(2, vmm.MappingCount);

        vmm.WriteStatus(DeviceStatus.Reset);
        Assert.Equal(DeviceStatus.Reset, vmm.ReadStatus());

        Assert.Equal(0, vmm.MappingCount);
        Assert.Equal(0, await On(a, () => a.Device.RegionsInUse));
    }

    [Fact]
    public async Task ACorruptRingSetsDeviceNeedsResetAndRaisesAConfigInterrupt()
    {
        Node a = await AddDevice("mmio-f");
        using MmioVmmClient vmm = MmioVmmClient.Connect(a.Transport.Endpoint);
        using IsmClient guest = IsmClient.Start(vmm);
        // Point the avail ring's index far ahead of the ring: the device must refuse the ring.
        DriverQueue q = guest.Driver.Queues[Virtio.ControlQueue];
        vmm.Ram.Span(q.Settings.AvailRing + 2, 2).Fill(0xff);
        vmm.Kick(Virtio.ControlQueue);

        await WaitUntil(a, () => (a.Device.Status & DeviceStatus.DeviceNeedsReset) != 0, "the device needs a reset");
        Assert.Equal(DeviceStatus.DeviceNeedsReset, vmm.ReadStatus() & DeviceStatus.DeviceNeedsReset);
        long deadline = Environment.TickCount64 + 20_000;
        while (vmm.ConfigChanges == 0 && Environment.TickCount64 < deadline) await Task.Delay(10);
        Assert.Equal(1, vmm.ConfigChanges);
    }

    private static async Task WaitUntil(Node n, Func<bool> condition, string what)
    {
        long deadline = Environment.TickCount64 + 20_000;
        while (!await On(n, condition))
        {
            if (Environment.TickCount64 > deadline) throw new TimeoutException($"timed out waiting until {what}");
            await Task.Delay(10);
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (Node n in _nodes) await n.Transport.DisposeAsync();
        foreach (Node n in _nodes) _host.RemoveDevice(n.Device);
        _host.Dispose();
        foreach (Node n in _nodes)
        {
            n.Events.Dispose();
            n.Memory.Dispose();
        }
        foreach (EventLoop l in _loops) l.Dispose();
        _dir.Dispose();
    }

    /// <summary>The event-channel seam for these tests: per-region vectors (what Events.Irq does) or,
    /// with <c>eventq</c>, one-offset <c>virtio_ism_event</c> records on queue 1 (what Events.Vq does).</summary>
    private sealed class TestEvents(bool eventq) : IEventChannel
    {
        private readonly Dictionary<ulong, int> _vectors = [];
        private readonly Queue<ulong> _undelivered = new();
        private IEventContext? _context;

        public ulong Features => Vism.Abstractions.Features.Mask(eventq ? Vism.Abstractions.Features.IsmEventVq : Vism.Abstractions.Features.IsmEventIrq);
        public int QueueCount => eventq ? 1 : 0;
        public void Activate(IEventContext context) => _context = context;

        public void Deactivate()
        {
            _context = null;
            _vectors.Clear();
            _undelivered.Clear();
        }

        public void OnRegionUpdated(ulong offset)
        {
            if (_context is null) return;
            if (!eventq)
            {
                if (_vectors.TryGetValue(offset, out int v)) _context.SignalVector(v);
                return;
            }
            _undelivered.Enqueue(offset);
            Flush();
        }

        public void OnRegionDetached(ulong offset) => _vectors.Remove(offset);

        public bool TryBindVector(ulong offset, ulong vector, out string? failure)
        {
            failure = _context is null || vector >= (ulong)_context.VectorCount ? $"vector {vector} is not offered" : null;
            if (failure is null) _vectors[offset] = (int)vector;
            return failure is null;
        }

        public void OnQueueNotified(int queueIndex) => Flush();

        private void Flush()
        {
            IVirtqueue? q = _context?.GetQueue(Virtio.EventQueue);
            Span<byte> record = stackalloc byte[16];
            while (q is not null && _undelivered.Count > 0 && q.TryPop(out DescriptorChain? chain))
            {
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(record, 1);
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(record[8..], _undelivered.Dequeue());
                int written = chain.Write(_context!.Memory, 0, record);
                q.Complete(chain, written < 0 ? 0 : (uint)written);
            }
        }

        public void Dispose() { }
    }
}
