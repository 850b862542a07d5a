using System.Buffers.Binary;
using System.Diagnostics;

namespace Vism.Events.Tests;

/// <summary>Events.Vq through the driver over the in-memory transport: folding, the bound on pending
/// updates, buffer filling, detach and reset, interrupt suppression and batching.</summary>
public sealed class VqEventChannelTests
{
    /// <summary>A device with 8 region slots (a 4 MiB window of 256 KiB regions: 2 MiB REGIONS, 2 MiB NOTIFY).</summary>
    private static readonly PeerSpec Tiny = new() { Window = 4 << 20, RegionSize = 256 << 10 };

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void PendingUpdatesNeverExceedOnePerRegionSlotAndEveryFoldIsCounted(bool eventIdx)
    {
        using var rig = new EventRig();
        Peer a = rig.Add(EventsKind.Vq, Tiny);
        Peer b = rig.Add(EventsKind.Vq, Tiny with { Client = new IsmClientOptions { PostEventBuffers = false, EventIdx = eventIdx } });
        int slots = b.Device.Description.MaxRegions;
        Assert.Equal(8, slots);
        (ulong[] atA, ulong[] atB) = EventRig.Share(a, b, slots);

        for (int round = 0; round < 50; round++)
            foreach (ulong offset in atA)
                a.C.Notify(offset);
        Assert.True(a.WaitCounter("notify.routed", 50 * slots));
        b.Settle();

        Assert.Equal(slots, b.OnLoop(() => b.Vq.Pending));
        Assert.Equal(49 * slots, b.Counters.Get("events.folded"));
        Assert.Equal(slots, b.Counters.Get("events.vq.queued"));
        b.C.PostEventBuffers();
        Assert.Equal(atB, b.CollectEvents(atLeast: slots));
    }

    [Fact]
    public void ABufferCarriesAsManyOffsetsAsFitAndTheRestFollowInLaterBuffersOldestFirst()
    {
        using var rig = new EventRig();
        Peer a = rig.Add(EventsKind.Vq, Tiny);
        Peer b = rig.Add(EventsKind.Vq, Tiny with
        {
            Client = new IsmClientOptions { PostEventBuffers = false, EventBuffers = 4, EventBufferSize = 8 + 8 * 3 + 4 },
        });
        (ulong[] atA, ulong[] atB) = EventRig.Share(a, b, 7);
        foreach (ulong offset in atA)
            a.C.Notify(offset);
        Assert.True(a.WaitCounter("notify.routed", 7));
        b.Settle();

        b.C.PostEventBuffers();
        Assert.Equal(atB[0..3], b.C.WaitEvent(EventRig.Wait));
        Assert.Equal(atB[3..6], b.C.WaitEvent(EventRig.Wait));
        Assert.Equal(atB[6..], b.C.WaitEvent(EventRig.Wait));
        Assert.Null(b.C.WaitEvent(EventRig.Quiet));
        Assert.Equal(3, b.Counters.Get("events.vq.buffers"));
        Assert.Equal(7, b.Counters.Get("events.vq.offsets"));
    }

    [Fact]
    public void ABufferTooSmallForOneOffsetComesBackEmptyAndTheUpdateWaitsForAUsableOne()
    {
        using var rig = new EventRig();
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Vq, new PeerSpec { Client = new IsmClientOptions { PostEventBuffers = false } });
        a.C.Notify(atA);
        Assert.True(a.WaitCounter("notify.routed", 1));
        b.Settle();

        DriverQueue eventq = b.C.Driver.Queues[Virtio.EventQueue];
        GuestRam ram = b.T.Ram;
        ulong small = ram.Allocate(12, 8);
        ulong large = ram.Allocate(16, 8);
        ushort smallHead = eventq.Add([], [new DriverBuffer(small, 12)]);
        b.C.Driver.KickIfNeeded(Virtio.EventQueue);
        Assert.True(b.C.Driver.WaitUsed(Virtio.EventQueue, EventRig.Wait, out UsedElement used));
        Assert.Equal(new UsedElement(smallHead, 0), used);
        Assert.Equal(1, b.Counters.Get("err.events.vq.buffer-too-small"));
        Assert.True(rig.Logs.Logged("needs 16"));
        Assert.Equal(1, b.OnLoop(() => b.Vq.Pending));

        ushort largeHead = eventq.Add([], [new DriverBuffer(large, 16)]);
        b.C.Driver.KickIfNeeded(Virtio.EventQueue);
        Assert.True(b.C.Driver.WaitUsed(Virtio.EventQueue, EventRig.Wait, out used));
        Assert.Equal(new UsedElement(largeHead, 16), used);
        Assert.Equal(1UL, BinaryPrimitives.ReadUInt64LittleEndian(ram.Span(large, 8)));
        Assert.Equal(at, BinaryPrimitives.ReadUInt64LittleEndian(ram.Span(large + 8, 8)));
    }

    [Fact]
    public void DetachDropsThePendingUpdateOfTheRegionAndNothingArrivesForIt()
    {
        using var rig = new EventRig();
        Peer a = rig.Add(EventsKind.Vq);
        Peer b = rig.Add(EventsKind.Vq, new PeerSpec { Client = new IsmClientOptions { PostEventBuffers = false } });
        AllocReply kept = a.Alloc();
        AllocReply dropped = a.Alloc();
        ulong keptAt = b.Attach(kept.Token);
        ulong droppedAt = b.Attach(dropped.Token);
        a.C.Notify(dropped.Offset);
        a.C.Notify(kept.Offset);
        Assert.True(a.WaitCounter("notify.routed", 2));
        b.Settle();
        Assert.Equal(2, b.OnLoop(() => b.Vq.Pending));

        Assert.Equal(IsmControl.AckOk, b.C.Detach(droppedAt));
        Assert.Equal(1, b.Counters.Get("events.vq.dropped-detached"));
        b.C.PostEventBuffers();
        Assert.Equal([keptAt], b.CollectEvents(atLeast: 1));
    }

    [Fact]
    public void AResetDropsPendingUpdatesAndTheRestartedDriverGetsNoneOfThem()
    {
        using var rig = new EventRig();
        (Peer a, Peer b, ulong atA, _) = rig.Pair(EventsKind.Vq, new PeerSpec { Client = new IsmClientOptions { PostEventBuffers = false } });
        a.C.Notify(atA);
        Assert.True(a.WaitCounter("notify.routed", 1));
        b.Settle();
        Assert.Equal(1, b.OnLoop(() => b.Vq.Pending));

        b.T.WriteStatus(DeviceStatus.Reset);
        Assert.Equal(0, b.OnLoop(() => b.Vq.Pending));
        Assert.Equal(1, b.Counters.Get("events.vq.dropped-reset"));
        Assert.False(b.OnLoop(() => b.Vq.IsActive));

        IsmClient again = IsmClient.Start(b.T);
        Assert.True(b.OnLoop(() => b.Vq.IsActive));
        Assert.Null(again.WaitEvent(EventRig.Quiet));
        Assert.Equal(0, b.Counters.Get("events.vq.offsets"));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void InterruptSuppressionByTheDriverHoldsBackTheInterruptButNotTheEvent(bool eventIdx)
    {
        using var rig = new EventRig();
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Vq, new PeerSpec { Client = new IsmClientOptions { EventIdx = eventIdx } });
        var signals = (InMemoryTransport)b.T;
        DriverQueue eventq = b.C.Driver.Queues[Virtio.EventQueue];
        Assert.Equal(eventIdx, eventq.EventIdx);
        if (eventIdx)
            eventq.RawSetUsedEvent((ushort)(eventq.UsedIndex + 1000)); // interrupt me much later
        else
            eventq.SuppressInterrupts(true);
        signals.DrainQueueSignals(Virtio.EventQueue);

        a.C.Notify(atA);
        Assert.True(b.WaitCounter("events.vq.offsets", 1));
        Assert.Equal(0UL, signals.DrainQueueSignals(Virtio.EventQueue));
        Assert.Equal(1, b.Counters.Get("queue.interrupt-suppressed"));
        Assert.Equal([at], b.C.DrainEvents());

        // Asking again brings the interrupt back.
        if (eventIdx)
            eventq.RawSetUsedEvent(eventq.UsedIndex);
        else
            eventq.SuppressInterrupts(false);
        a.C.Notify(atA);
        Assert.True(b.T.WaitQueue(Virtio.EventQueue, EventRig.Wait));
        Assert.Equal([at], b.C.DrainEvents());
    }

    [Fact]
    public void UpdatesWithinTheBatchDelayShareOneBuffer()
    {
        using var rig = new EventRig();
        Peer a = rig.Add(EventsKind.Vq);
        Peer b = rig.Add(EventsKind.Vq, new PeerSpec { Vq = new VqEventOptions { BatchDelay = TimeSpan.FromSeconds(1) } });
        (ulong[] atA, ulong[] atB) = EventRig.Share(a, b, 3);
        long start = Stopwatch.GetTimestamp();
        foreach (ulong offset in atA)
            a.C.Notify(offset);
        Assert.True(b.WaitCounter("events.updates", 3));
        b.T.Kick(Virtio.EventQueue); // a kick with buffers already posted does not cut the delay short
        int pending = b.OnLoop(() => b.Vq.Pending);
        // The flush is due one second after the first update; when the last arrived and the kick
        // was handled well before that (as they are unless the machine stalls), all three are
        // still pending and then share the first buffer.
        bool prompt = Stopwatch.GetElapsedTime(start) < TimeSpan.FromMilliseconds(900);
        if (prompt)
            Assert.Equal(3, pending);

        Assert.Equal(atB, b.CollectEvents(atLeast: 3));
        if (prompt)
            Assert.Equal(1, b.Counters.Get("events.vq.buffers"));
    }

    [Fact]
    public void EventVectorIsErrOnAVqDeviceBecauseItDoesNotOfferEventIrq()
    {
        using var rig = new EventRig();
        Peer a = rig.Add(EventsKind.Vq);
        AllocReply region = a.Alloc();
        Assert.Equal(IsmControl.AckErr, a.C.EventVector(region.Offset, 0));
        Assert.Equal(1, a.Counters.Get("err.event-vector.not-negotiated"));
        Assert.False(a.Events.TryBindVector(new RegionSlot(0, region.Offset), 0, out Refusal why));
        Assert.Contains("irq", why.Detail);
    }

    [Fact]
    public void TooSmallBuffers_Flood_EachCountedButLoggedRateLimited()
    {
        using var rig = new EventRig();
        (Peer a, Peer b, ulong atA, _) = rig.Pair(EventsKind.Vq, new PeerSpec { Client = new IsmClientOptions { PostEventBuffers = false } });
        a.C.Notify(atA);
        Assert.True(a.WaitCounter("notify.routed", 1));
        b.Settle();

        const int Buffers = 40;
        DriverQueue eventq = b.C.Driver.Queues[Virtio.EventQueue];
        GuestRam ram = b.T.Ram;
        for (int i = 0; i < Buffers; i++)
            eventq.Add([], [new DriverBuffer(ram.Allocate(8, 8), 8)]);
        b.C.Driver.KickIfNeeded(Virtio.EventQueue);
        for (int i = 0; i < Buffers; i++)
        {
            Assert.True(b.C.Driver.WaitUsed(Virtio.EventQueue, EventRig.Wait, out UsedElement used));
            Assert.Equal(0u, used.Written);
        }

        Assert.Equal(Buffers, b.Counters.Get("err.events.vq.buffer-too-small"));
        // RateLimitedLog: the first 10, then the 16th and the 32nd.
        Assert.Equal(12, rig.Logs.Entries.Count(e => e.Message.Contains("needs 16", StringComparison.Ordinal)));
        Assert.Equal(1, b.OnLoop(() => b.Vq.Pending));
    }
}
