using System.Diagnostics;

namespace Vism.Events.Tests;

/// <summary>Events.Irq through the driver over the in-memory transport: updates before EVENT_VECTOR,
/// rebinding, detach and reset, and batching of regions that share a vector.</summary>
public sealed class IrqEventChannelTests
{
    [Fact]
    public void AnUpdateBeforeEventVectorIsHeldAndFiresTheVectorTheRegionIsThenBoundTo()
    {
        using var rig = new EventRig();
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Irq);
        a.C.Notify(atA);
        a.C.Notify(atA);
        Assert.True(b.WaitCounter("events.irq.unbound", 2));
        Assert.Equal(1, b.Counters.Get("events.folded"));
        for (int v = 0; v < 4; v++)
            Assert.False(b.C.WaitVector(v, TimeSpan.Zero));

        Assert.Equal(IsmControl.AckOk, b.C.EventVector(at, 2));
        Assert.Equal([at], b.C.WaitVectorEvent(2, EventRig.Wait));
        Assert.False(b.C.WaitVector(2, EventRig.Quiet)); // held once, fired once
        Assert.Equal(1, b.Counters.Get("events.irq.fired-on-bind"));
    }

    [Fact]
    public void WithUnboundDropAnUpdateBeforeEventVectorIsDroppedAndCounted()
    {
        using var rig = new EventRig();
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Irq, new PeerSpec { Irq = new IrqEventOptions { Unbound = UnboundUpdates.Drop } });
        a.C.Notify(atA);
        Assert.True(b.WaitCounter("events.irq.dropped-unbound", 1));

        Assert.Equal(IsmControl.AckOk, b.C.EventVector(at, 2));
        Assert.False(b.C.WaitVector(2, EventRig.Quiet));
        a.C.Notify(atA);
        Assert.Equal([at], b.C.WaitVectorEvent(2, EventRig.Wait));
    }

    [Fact]
    public void RebindingARegionMovesItsUpdatesToTheNewVector()
    {
        using var rig = new EventRig();
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Irq);
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(at, 0));
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(at, 3));

        a.C.Notify(atA);
        Assert.Equal([at], b.C.WaitVectorEvent(3, EventRig.Wait));
        Assert.False(b.C.WaitVector(0, EventRig.Quiet));
        Assert.Empty(b.C.RegionsOnVector(0));
    }

    [Fact]
    public void DetachClearsTheBindingSoARegionAttachedAgainInThatSlotFiresNothingUntilBound()
    {
        using var rig = new EventRig();
        Peer a = rig.Add(EventsKind.Vq);
        Peer b = rig.Add(EventsKind.Irq);
        AllocReply first = a.Alloc();
        AllocReply second = a.Alloc();
        ulong at = b.Attach(first.Token);
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(at, 1));
        Assert.Equal(IsmControl.AckOk, b.C.Detach(at));
        Assert.Null(b.OnLoop(() => b.Irq.VectorOf(at)));
        Assert.Empty(b.C.RegionsOnVector(1));

        Assert.Equal(at, b.Attach(second.Token)); // the freed slot is reused
        a.C.Notify(second.Offset);
        Assert.True(b.WaitCounter("events.irq.unbound", 1));
        Assert.False(b.C.WaitVector(1, EventRig.Quiet));
    }

    [Fact]
    public void AResetClearsEveryBinding()
    {
        using var rig = new EventRig();
        Peer b = rig.Add(EventsKind.Irq);
        AllocReply own = b.Alloc();
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(own.Offset, 1));
        Assert.Equal(1, b.OnLoop(() => b.Irq.VectorOf(own.Offset)));

        b.T.WriteStatus(DeviceStatus.Reset);
        Assert.False(b.OnLoop(() => b.Irq.IsActive));
        Assert.Null(b.OnLoop(() => b.Irq.VectorOf(own.Offset)));
    }

    [Fact]
    public void RegionsSharingAVectorUpdatedWithinTheBatchDelayFireItOnce()
    {
        using var rig = new EventRig();
        Peer a = rig.Add(EventsKind.Vq);
        Peer b = rig.Add(EventsKind.Irq, new PeerSpec { Irq = new IrqEventOptions { BatchDelay = TimeSpan.FromSeconds(1) } });
        (ulong[] atA, ulong[] atB) = EventRig.Share(a, b, 3);
        foreach (ulong offset in atB)
            Assert.Equal(IsmControl.AckOk, b.C.EventVector(offset, 1));
        long start = Stopwatch.GetTimestamp();
        foreach (ulong offset in atA)
            a.C.Notify(offset);
        Assert.True(b.WaitCounter("events.updates", 3));
        // The vector is due one second after the first update; when the last arrived well before
        // that (as it does unless the machine stalls), it fires once for all three.
        bool prompt = Stopwatch.GetElapsedTime(start) < TimeSpan.FromMilliseconds(900);

        Assert.Equal(3, b.C.WaitVectorEvent(1, EventRig.Wait)?.Count);
        b.CollectFirings(1);
        long fired = b.Counters.Get("events.irq.fired");
        Assert.Equal(3, fired + b.Counters.Get("events.folded"));
        if (prompt)
            Assert.Equal(1, fired);
    }
}
