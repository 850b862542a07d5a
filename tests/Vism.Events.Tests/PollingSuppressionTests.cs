using System.Diagnostics;

namespace Vism.Events.Tests;

/// <summary>
/// A driver that polls its eventq's used ring (spin-before-block) asks the device for no interrupt
/// meanwhile, as Linux's NAPI does, and asks again before it sleeps: an event caught by the spin
/// costs no interrupt (over MMIO no InterruptStatus round trip either), an event that comes while
/// the driver sleeps still wakes it. Over every transport.
/// </summary>
public sealed class PollingSuppressionTests
{
    public static TheoryData<string> Transports() => TransportKinds.Names();

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task AnEventCaughtWhileTheDriverPollsRaisesNoInterruptAndASleepingDriverStillWakes(string transport)
    {
        using var rig = new EventRig(transport);
        var polling = new PeerSpec { Client = new IsmClientOptions { SpinBeforeBlock = TimeSpan.FromSeconds(20) } };
        (Peer a, Peer b, ulong atA, ulong at) = rig.Pair(EventsKind.Vq, polling);
        DriverQueue eventq = b.C.Driver.Queues[Virtio.EventQueue];
        long suppressed = b.Counters.Get("queue.interrupt-suppressed");

        Task<IReadOnlyList<ulong>?> waiting = Task.Run(() => b.C.WaitEvent(EventRig.Wait));
        var sw = Stopwatch.StartNew();
        while (!eventq.Polling && sw.Elapsed < EventRig.Wait)
            await Task.Delay(1);
        Assert.True(eventq.Polling, "the waiter polls its used ring");
        a.C.Notify(atA);

        Assert.Equal([at], await waiting.WaitAsync(EventRig.Wait));
        Assert.False(eventq.Polling, "the waiter asks for interrupts again when it returns");
        Assert.True(b.Counters.Get("queue.interrupt-suppressed") > suppressed, "the device raised the interrupt the polling driver asked it not to");

        // Nobody waits now: the next event must raise the interrupt a sleeping driver relies on.
        long before = b.Counters.Get("queue.interrupt-suppressed");
        long records = b.Counters.Get("events.updates");
        a.C.Notify(atA);
        Assert.True(b.WaitCounter("events.updates", records + 1), "the second update reached the peer");
        b.Settle();
        Assert.Equal(before, b.Counters.Get("queue.interrupt-suppressed"));
        Assert.Equal([at], b.C.WaitEvent(EventRig.Wait));
    }
}
