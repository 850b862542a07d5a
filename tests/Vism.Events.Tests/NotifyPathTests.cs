using System.Diagnostics;

namespace Vism.Events.Tests;

/// <summary>
/// The notify path end to end through the driver: a notify-slot write on one device reaches every
/// other device referencing the region through that device's event plugin. Every test is a theory
/// over the transports in <see cref="TransportKinds"/>.
/// </summary>
public sealed class NotifyPathTests
{
    private const int Notifies = 10_000;

    public static TheoryData<string> Transports() => TransportKinds.Names();

    public static TheoryData<string, EventsKind> TransportsAndEvents() => TransportKinds.NamesAndEvents();

    [Theory]
    [MemberData(nameof(TransportsAndEvents))]
    public void ANotifyReachesThePeerAsAnEventWithinAGenerousBound(string transport, EventsKind events)
    {
        using var rig = new EventRig(transport);
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(events);
        if (events == EventsKind.Irq)
            Assert.Equal(IsmControl.AckOk, b.C.EventVector(at, 1));

        TimeSpan worst = TimeSpan.Zero;
        for (int i = 0; i < 20; i++)
        {
            long start = Stopwatch.GetTimestamp();
            a.C.Notify(atA);
            IReadOnlyList<ulong>? got = events == EventsKind.Vq ? b.C.WaitEvent(EventRig.Wait) : b.C.WaitVectorEvent(1, EventRig.Wait);
            TimeSpan took = Stopwatch.GetElapsedTime(start);
            Assert.Equal([at], got);
            if (took > worst)
                worst = took;
        }
        // Generous: a loaded 2-core machine, and transports that poll the NOTIFY window.
        Assert.True(worst < TimeSpan.FromSeconds(2), $"the slowest of 20 notify -> event round trips took {worst.TotalMilliseconds:F1} ms");
    }

    [Fact]
    public void WaitEventIntoASpanCopiesTheOffsetsAndAllocatesNothingPerCall()
    {
        using var rig = new EventRig("vhost-user");
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Vq);
        Span<ulong> offsets = stackalloc ulong[8];
        for (int i = 0; i < 50; i++) // warm-up: every path taken once, and compiled
        {
            a.C.Notify(atA);
            Assert.Equal(1, b.C.WaitEvent(offsets, EventRig.Wait));
            Assert.Equal(at, offsets[0]);
        }
        a.C.Notify(atA);
        a.AwaitNotifies();
        b.Settle();
        long before = GC.GetAllocatedBytesForCurrentThread();
        int n = b.C.WaitEvent(offsets, EventRig.Wait);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(1, n);
        Assert.Equal(at, offsets[0]);
        Assert.Equal(0, allocated);
        Assert.Equal(-1, b.C.WaitEvent(offsets, TimeSpan.FromMilliseconds(20)));
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public void TenThousandNotifiesGiveEventqRecordsAtMostOncePerNotifyAndNoneAfterDetach(string transport)
    {
        using var rig = new EventRig(transport);
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Vq);

        var offsets = new List<ulong>();
        WhileReading(
            () =>
            {
                if (b.C.WaitEvent(TimeSpan.FromMilliseconds(20)) is { } e)
                    offsets.AddRange(e);
            },
            () =>
            {
                for (int i = 0; i < Notifies; i++)
                    a.C.Notify(atA);
                a.AwaitNotifies();
                b.Settle();
            });
        offsets.AddRange(b.CollectEvents());

        long seen = Seen(rig, a);
        Assert.InRange(offsets.Count, 1, seen);
        Assert.All(offsets, o => Assert.Equal(at, o));
        // Each update was either written once or folded into the one already pending; none waits.
        Assert.Equal(seen, b.Counters.Get("events.updates"));
        Assert.Equal(seen, b.Counters.Get("events.vq.queued") + b.Counters.Get("events.folded"));
        Assert.Equal(offsets.Count, b.Counters.Get("events.vq.offsets"));
        Assert.Equal(0, b.OnLoop(() => b.Vq.Pending));

        Assert.Equal(IsmControl.AckOk, b.C.Detach(at));
        for (int i = 0; i < 100; i++)
            a.C.Notify(atA);
        a.AwaitNotifies();
        b.Settle();
        Assert.Empty(b.CollectEvents());
        Assert.Equal(seen, a.Counters.Get("notify.routed"));
        Assert.Equal(seen, b.Counters.Get("events.updates"));
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public void TenThousandNotifiesFireTheBoundVectorAtMostOncePerNotifyAndNeverAfterDetach(string transport)
    {
        using var rig = new EventRig(transport);
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Irq);
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(at, 2));

        int firings = 0;
        WhileReading(
            () =>
            {
                if (b.C.WaitVector(2, TimeSpan.FromMilliseconds(20)))
                    firings++;
            },
            () =>
            {
                for (int i = 0; i < Notifies; i++)
                    a.C.Notify(atA);
                a.AwaitNotifies();
                b.Settle();
            });
        firings += b.CollectFirings(2);

        long seen = Seen(rig, a);
        long fired = b.Counters.Get("events.irq.fired");
        Assert.InRange(firings, 1, seen);
        Assert.InRange(fired, firings, seen); // a driver may see two firings as one interrupt, never more
        Assert.Equal(seen, b.Counters.Get("events.updates"));
        Assert.Equal(seen, fired + b.Counters.Get("events.folded"));
        Assert.False(b.C.WaitVector(0, TimeSpan.Zero));

        Assert.Equal(IsmControl.AckOk, b.C.Detach(at));
        b.CollectFirings(2);
        for (int i = 0; i < 100; i++)
            a.C.Notify(atA);
        a.AwaitNotifies();
        b.Settle();
        Assert.False(b.C.WaitVector(2, EventRig.Quiet));
        Assert.Equal(fired, b.Counters.Get("events.irq.fired"));
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public void ABurstAcross1000RegionsReachesASlowVqDriverWithEveryOffsetExactlyOnce(string transport)
    {
        using var rig = new EventRig(transport);
        var small = new PeerSpec { Window = 8 * EventRig.MiB, RegionSize = 4096 };
        Peer a = rig.Add(EventsKind.Vq, small);
        Peer b = rig.Add(EventsKind.Vq, small with
        {
            Client = new IsmClientOptions { PostEventBuffers = false, EventBuffers = 4, EventBufferSize = 8 + 8 * 7 },
        });
        (ulong[] atA, ulong[] atB) = EventRig.Share(a, b, 1000);

        // Every region updated twice while the driver has posted no buffer: the second update folds.
        // The first pass fixes the order. Where the transport polls a window or reads doorbells
        // (not trapped), writes racing a scan are seen in scan order, not write order (a scan that
        // passed slot 5 before it was written reports 900 first, and 5 in the next scan), so
        // there each write is seen before the next is made.
        for (int pass = 0; pass < 2; pass++)
        {
            foreach (ulong offset in atA)
            {
                a.C.Notify(offset);
                if (pass == 0 && !rig.TrapsNotifyWrites)
                    a.AwaitNotifies();
            }
            a.AwaitNotifies();
        }
        Assert.Equal(2000, a.Counters.Get("notify.routed"));
        b.Settle();
        Assert.Equal(1000, b.OnLoop(() => b.Vq.Pending));
        Assert.Equal(1000, b.Counters.Get("events.folded"));
        Assert.Equal(0, b.Counters.Get("events.vq.offsets"));

        Assert.Equal(4, b.C.PostEventBuffers());
        List<ulong> got = b.CollectEvents(atLeast: 1000);

        Assert.Equal(atB, got); // each exactly once, oldest first
        Assert.Equal(0, b.OnLoop(() => b.Vq.Pending));
        Assert.True(b.Counters.Get("events.vq.buffers") >= 1000 / 7);
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public void ABurstAcross1000RegionsSharingFourVectorsFiresEveryVectorTheUpdatedRegionsAreBoundTo(string transport)
    {
        using var rig = new EventRig(transport);
        var small = new PeerSpec { Window = 8 * EventRig.MiB, RegionSize = 4096 };
        Peer a = rig.Add(EventsKind.Vq, small);
        Peer b = rig.Add(EventsKind.Irq, small);
        (ulong[] atA, ulong[] atB) = EventRig.Share(a, b, 1000);
        for (int i = 0; i < atB.Length; i++)
            Assert.Equal(IsmControl.AckOk, b.C.EventVector(atB[i], (ulong)(i % 4)));

        foreach (ulong offset in atA)
            a.C.Notify(offset);
        a.AwaitNotifies();
        Assert.Equal(1000, a.Counters.Get("notify.routed"));
        b.Settle();

        var seen = new List<ulong>();
        for (int v = 0; v < 4; v++)
        {
            IReadOnlyList<ulong>? bound = b.C.WaitVectorEvent(v, EventRig.Wait);
            Assert.NotNull(bound);
            Assert.Equal(250, bound.Count);
            seen.AddRange(bound);
        }
        Assert.Equal(atB.Order(), seen.Order());
        long fired = b.Counters.Get("events.irq.fired");
        Assert.InRange(fired, 4, 1000);
        Assert.Equal(1000, fired + b.Counters.Get("events.folded"));
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public void VqAndIrqPeersOfOneRegionGetEachOthersUpdatesAndNeverTheirOwn(string transport)
    {
        using var rig = new EventRig(transport, SharingMode.Multi, loops: 3);
        Peer a = rig.Add(EventsKind.Vq);
        Peer b = rig.Add(EventsKind.Irq);
        Peer c = rig.Add(EventsKind.Vq);
        c.Alloc(); // c sees the shared region at another offset than a and b
        AllocReply region = a.Alloc();
        ulong atB = b.Attach(region.Token);
        ulong atC = c.Attach(region.Token);
        Assert.NotEqual(region.Offset, atC);
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(atB, 0));

        a.C.Notify(region.Offset);
        Assert.Equal([atB], b.C.WaitVectorEvent(0, EventRig.Wait));
        Assert.Equal([atC], c.C.WaitEvent(EventRig.Wait));

        b.C.Notify(atB);
        Assert.Equal([region.Offset], a.C.WaitEvent(EventRig.Wait));
        Assert.Equal([atC], c.C.WaitEvent(EventRig.Wait));

        c.C.Notify(atC);
        Assert.Equal([region.Offset], a.C.WaitEvent(EventRig.Wait));
        Assert.Equal([atB], b.C.WaitVectorEvent(0, EventRig.Wait));

        // Nobody heard its own notify.
        Assert.Null(a.C.WaitEvent(EventRig.Quiet));
        Assert.False(b.C.WaitVector(0, EventRig.Quiet));
        Assert.Null(c.C.WaitEvent(EventRig.Quiet));
        Assert.Equal(2, a.Counters.Get("notify.routed"));
        Assert.Equal(2, a.Counters.Get("events.updates"));
        Assert.Equal(2, b.Counters.Get("events.updates"));
        Assert.Equal(2, c.Counters.Get("events.updates"));
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public void RegionsSharingAVectorFireThatVectorAndNoOther(string transport)
    {
        using var rig = new EventRig(transport);
        Peer a = rig.Add(EventsKind.Vq);
        Peer b = rig.Add(EventsKind.Irq);
        (ulong[] atA, ulong[] atB) = EventRig.Share(a, b, 4);
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(atB[0], 3));
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(atB[1], 3));
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(atB[2], 1));

        a.C.Notify(atA[1]);
        Assert.Equal([atB[0], atB[1]], b.C.WaitVectorEvent(3, EventRig.Wait));
        Assert.False(b.C.WaitVector(1, EventRig.Quiet));

        a.C.Notify(atA[2]);
        Assert.Equal([atB[2]], b.C.WaitVectorEvent(1, EventRig.Wait));
        Assert.False(b.C.WaitVector(3, EventRig.Quiet));

        // atB[3] has no vector yet: its update is held and fires the vector it is then bound to.
        a.C.Notify(atA[3]);
        Assert.True(a.WaitCounter("notify.routed", 3));
        Assert.True(b.WaitCounter("events.irq.unbound", 1));
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(atB[3], 0));
        Assert.Equal([atB[3]], b.C.WaitVectorEvent(0, EventRig.Wait));
        Assert.Equal(1, b.Counters.Get("events.irq.fired-on-bind"));
        Assert.False(b.C.WaitVector(1, EventRig.Quiet) || b.C.WaitVector(2, TimeSpan.Zero) || b.C.WaitVector(3, TimeSpan.Zero));
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public void EventVectorIsErrForAVectorTheTransportLacksOrAnOffsetThatIsNotAttached(string transport)
    {
        using var rig = new EventRig(transport);
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Irq, new PeerSpec { Vectors = 4 });

        Assert.Equal(IsmControl.AckErr, b.C.EventVector(at, 4));
        Assert.Equal(IsmControl.AckErr, b.C.EventVector(at, ulong.MaxValue));
        Assert.Equal(2, b.Counters.Get("err.event-vector.rejected"));
        Assert.True(rig.Logs.Logged("vector 4 is not below the 4 per-region vectors"));
        Assert.Equal(IsmControl.AckErr, b.C.EventVector(at + b.C.RegionSize, 0)); // nothing attached there
        Assert.Equal(IsmControl.AckErr, b.C.EventVector(at + 8, 0)); // not a region offset
        Assert.Equal(2, b.Counters.Get("err.event-vector.not-assigned"));
        Assert.Null(b.OnLoop(() => b.Irq.VectorOf(at)));

        Assert.Equal(IsmControl.AckOk, b.C.EventVector(at, 3));
        Assert.Equal(3, b.OnLoop(() => b.Irq.VectorOf(at)));

        // A transport that offers no vectors: every EVENT_VECTOR is ERR, with the reason.
        Peer c = rig.Add(EventsKind.Irq, new PeerSpec { Vectors = 0 });
        AllocReply own = c.Alloc();
        Assert.Equal(IsmControl.AckErr, c.C.EventVector(own.Offset, 0));
        Assert.True(rig.Logs.Logged("offers no per-region vectors"));
    }

    [Theory]
    [MemberData(nameof(TransportsAndEvents))]
    public void EachPluginOffersOnlyItsFeatureBitAndTheEventqExistsOnlyWithEventVq(string transport, EventsKind events)
    {
        using var rig = new EventRig(transport);
        Peer p = rig.Add(events);
        bool vq = events == EventsKind.Vq;
        Assert.Equal(vq, Features.Has(p.C.Driver.DeviceFeatures, Features.IsmEventVq));
        Assert.Equal(!vq, Features.Has(p.C.Driver.DeviceFeatures, Features.IsmEventIrq));
        Assert.Equal(vq ? 2 : 1, p.C.Driver.Queues.Count);
        Assert.Equal(vq ? 2 : 1, p.Device.QueueCount);
        Assert.True(p.OnLoop(() => p.Events is VqEventChannel v ? v.IsActive : ((IrqEventChannel)p.Events).IsActive));
    }

    [Theory]
    [MemberData(nameof(TransportsAndEvents))]
    public void ADriverThatDeclinesTheEventFeatureGetsNoEventsAndEventVectorIsErr(string transport, EventsKind events)
    {
        using var rig = new EventRig(transport);
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(events, new PeerSpec { Client = new IsmClientOptions { EventVq = false, EventIrq = false } });
        Assert.False(b.C.Driver.Has(Features.IsmEventVq) || b.C.Driver.Has(Features.IsmEventIrq));
        Assert.Single(b.C.Driver.Queues);
        Assert.False(b.OnLoop(() => b.Events is VqEventChannel v ? v.IsActive : ((IrqEventChannel)b.Events).IsActive));

        Assert.Equal(IsmControl.AckErr, b.C.EventVector(at, 0));
        Assert.Equal(1, b.Counters.Get("err.event-vector.not-negotiated"));
        Assert.Throws<InvalidOperationException>(() => b.C.WaitEvent(TimeSpan.Zero));

        a.C.Notify(atA);
        Assert.True(a.WaitCounter("notify.routed", 1));
        b.Settle();
        Assert.Equal(1, b.Counters.Get("events.dropped.no-events"));
        Assert.Equal(0, b.Counters.Get("events.updates"));
        for (int v = 0; v < 4; v++)
            Assert.False(b.C.WaitVector(v, TimeSpan.Zero));
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public void TheNotifyWindowHasASlotPerRegionAndAWriterWithoutAnEventFeatureSignalsNobody(string transport)
    {
        using var rig = new EventRig(transport);
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Vq, writer: new PeerSpec { Client = new IsmClientOptions { EventVq = false } });
        DeviceDescription d = a.Device.Description;
        Assert.True(a.T.ShmLength(ShmId.Notify) >= (ulong)d.MaxRegions * a.C.NotifySize);
        Assert.Equal(d.NotifyWindowSize, b.T.ShmLength(ShmId.Notify));

        // v1: only a device that negotiated an event feature takes part in events.
        a.C.Notify(atA);
        Assert.True(a.WaitCounter("notify.dropped.writer-no-events", 1));
        // A slot that holds no region signals nobody (a trapping transport reports it, counted as
        // an error on the writer; vhost-user only scans the slots in use).
        a.T.WriteNotify((ulong)(d.MaxRegions - 1) * a.C.NotifySize);
        a.AwaitNotifies();
        Assert.Equal(rig.SeesUnassignedSlots ? 1 : 0, a.Counters.Get("err.notify.unassigned"));
        b.Settle();
        Assert.Null(b.C.WaitEvent(EventRig.Quiet));
        Assert.Equal(0, b.Counters.Get("events.updates"));

        // The peer that negotiated EVENT_VQ still notifies the writer's device... which dropped the
        // feature, so the update is counted there and goes nowhere.
        b.C.Notify(at);
        Assert.True(a.WaitCounter("events.dropped.no-events", 1));
    }

    /// <summary>The NOTIFY writes <paramref name="writer"/>'s device saw of the <see cref="Notifies"/>
    /// its driver made: all of them when the transport traps writes, at least one otherwise.</summary>
    private static long Seen(EventRig rig, Peer writer)
    {
        long seen = writer.Counters.Get("notify.writes");
        if (rig.TrapsNotifyWrites)
            Assert.Equal(Notifies, seen);
        else
            Assert.InRange(seen, 1, Notifies);
        Assert.Equal(seen, writer.Counters.Get("notify.routed"));
        return seen;
    }

    /// <summary>Runs <paramref name="act"/> while a reader thread repeats <paramref name="step"/>
    /// (a driver taking events as they come), then stops the reader and waits for it.</summary>
    private static void WhileReading(Action step, Action act)
    {
        using var stop = new CancellationTokenSource();
        Task task = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
                step();
        });
        try
        {
            act();
        }
        finally
        {
            stop.Cancel();
            Assert.True(task.Wait(EventRig.Wait), "the reader did not stop");
        }
    }
}
