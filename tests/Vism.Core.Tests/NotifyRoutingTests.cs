namespace Vism.Core.Tests;

/// <summary>Notify-slot writes and how updates reach the other devices' event channels.</summary>
public sealed class NotifyRoutingTests
{
    private static readonly IsmClientOptions NoEvents = new() { EventIrq = false, EventVq = false };

    [Fact]
    public void EveryWriteByAReachesBAndCAtTheirOwnOffsetsAndNeverA()
    {
        using var rig = new Rig(SharingMode.Multi, loops: 3);
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Peer c = rig.AddClient("c");
        Assert.True(b.C.Alloc(4096).Ok);
        Assert.True(c.C.Alloc(4096).Ok);
        Assert.True(c.C.Alloc(4096).Ok);
        (AllocReply region, ulong atB) = Rig.Share(a, b);
        ulong atC = c.C.Attach(region.Token).Offset;
        Assert.Equal([region.Offset, atB, atC], new[] { 0UL, Rig.MiB, 2 * Rig.MiB });

        for (int i = 0; i < 100; i++)
            a.C.Notify(region.Offset);

        Assert.True(b.E.WaitForUpdates(100, Rig.Wait));
        Assert.True(c.E.WaitForUpdates(100, Rig.Wait));
        a.Settle();
        Assert.All(b.E.Updates, o => Assert.Equal(atB, o));
        Assert.All(c.E.Updates, o => Assert.Equal(atC, o));
        Assert.Equal(100, b.E.Updates.Count);
        Assert.Empty(a.E.Updates);
        Assert.Equal(200, a.Counters.Get("notify.routed"));
    }

    [Fact]
    public void BWritingNotifiesATheOtherWayRound()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        (AllocReply region, ulong atB) = Rig.Share(a, b);
        b.C.Notify(atB);
        Assert.True(a.E.WaitForUpdates(1, Rig.Wait));
        Assert.Equal([region.Offset], a.E.Updates);
    }

    [Fact]
    public void AWriterThatNegotiatedNoEventFeatureIsDroppedAndCounted()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a", options: NoEvents);
        Peer b = rig.AddClient("b");
        AllocReply region = Rig.Share(a, b).Region;
        a.C.Notify(region.Offset);
        a.Settle();
        b.Settle();
        Assert.Equal(1, a.Counters.Get("notify.dropped.writer-no-events"));
        Assert.Empty(b.E.Updates);
    }

    [Fact]
    public void AReceiverThatNegotiatedNoEventFeatureGetsNothingAndCountsTheDrop()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b", options: NoEvents);
        AllocReply region = Rig.Share(a, b).Region;
        Assert.Equal(0, b.E.Activations);
        a.C.Notify(region.Offset);
        a.Settle();
        b.Settle();
        Assert.Empty(b.E.Updates);
        Assert.Equal(1, b.Counters.Get("events.dropped.no-events"));
    }

    [Fact]
    public void WritesToSlotsWithoutARegionOrOutsideTheWindowAreCountedAndHarmless()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        a.T.WriteNotify(0);
        a.T.WriteNotify(a.Device.Description.NotifyWindowSize);
        a.T.WriteNotify(ulong.MaxValue);
        a.Settle();
        Assert.Equal(1, a.Counters.Get("err.notify.unassigned"));
        Assert.Equal(2, a.Counters.Get("err.notify.out-of-range"));
        Assert.True(a.C.Alloc(4096).Ok);
    }

    [Fact]
    public void ADetachedPeerNoLongerReceivesUpdates()
    {
        using var rig = new Rig(SharingMode.Multi);
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Peer c = rig.AddClient("c");
        (AllocReply region, ulong atB) = Rig.Share(a, b);
        Assert.True(c.C.Attach(region.Token).Ok);
        Assert.Equal(IsmControl.AckOk, b.C.Detach(atB));
        a.C.Notify(region.Offset);
        Assert.True(c.E.WaitForUpdates(1, Rig.Wait));
        b.Settle();
        Assert.Empty(b.E.Updates);
    }

    [Fact]
    public void TheEventChannelIsActivatedAtDriverOkWithItsContextAndDeactivatedAtReset()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p", vectors: 3);
        Assert.Equal(1, p.E.Activations);
        IEventContext context = p.E.Context!;
        Assert.True(Features.Has(context.NegotiatedFeatures, Features.IsmEventIrq));
        Assert.Equal(3, p.OnLoop(() => context.VectorCount));
        Assert.Null(p.OnLoop(() => context.GetQueue(Virtio.ControlQueue))); // the controlq is the core's
        Assert.Same(p.Counters, context.Counters);

        p.T.WriteStatus(DeviceStatus.Reset);
        Assert.Equal(1, p.E.Deactivations);
        Assert.Equal(0, p.OnLoop(() => context.VectorCount)); // a stale context is inert
        p.OnLoop(() => { context.SignalVector(0); return true; });
        Assert.False(p.T.WaitVector(0, TimeSpan.FromMilliseconds(20)));
    }

    [Fact]
    public void TheEventqIsOfferedToTheEventChannelThroughItsContext()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p", RecordingEventChannel.Vq());
        IEventContext context = p.E.Context!;
        IVirtqueue? eventq = p.OnLoop(() => context.GetQueue(Virtio.EventQueue));
        Assert.NotNull(eventq);
        Assert.True(p.OnLoop(() => eventq.IsReady));
        Assert.Equal(Virtio.EventQueue, eventq.Index);
        Assert.NotNull(p.OnLoop(() => context.Memory));
    }
}
