using Vism.Abstractions;
using Vism.Conformance.Composition;
using Vism.Core;
using Vism.Driver;

namespace Vism.Conformance.Checks;

/// <summary>Update events: the notify path, the eventq, per-region vectors, the NOTIFY window.</summary>
internal static class EventChecks
{
    private const string Event = "Event, device normative";
    private const string Notify = "After the device receives the notification from the driver, it MUST notify other guests that refer to this ism region.";
    private const string Vector = "Inform Event IRQ Vector, device normative";

    public static IEnumerable<ConformanceCheck> All =>
    [
        new("events.reach-peer",
            "a notify on one device's slot reaches the other device sharing the region, both ways",
            Statement.V1(Event, Notify),
            ReachPeer),
        new("events.not-writer",
            "writing a notify slot never signals the writing device itself",
            Statement.Design("Data flow, step 5", "The core finds every other device that references the region and hands the update to that device's events plugin"),
            NotWriter),
        new("events.three-devices",
            "sharing = multi: a notify reaches both other devices referencing the region",
            Statement.V1(Event, Notify),
            ThreeDevices),
        new("events.none-after-detach",
            "a device that detached a region gets no events for it; after attaching again it does",
            Statement.V1(Event, Notify),
            NoneAfterDetach),
        new("events.eventq-record",
            "with EVENT_VQ, events are {num, offset[]} records naming the receiver's offsets of the updated regions",
            Statement.V1("Event", "Such a structure will be received if VIRTIO_ISM_F_EVENT_VQ is negotiated. struct virtio_ism_event { le64 num; le64 offset[]; }; num: The number of ism regions with update events. offset: The offset of ism regions with update events."),
            EventqRecord),
        new("eventq.only-with-event-vq",
            "the eventq is used when EVENT_VQ is negotiated; without it the device runs on the controlq alone",
            Statement.V1("Virtqueues", "eventq only exists if VIRTIO_ISM_F_EVENT_VQ is negotiated."),
            EventqOnlyWithEventVq),
        new("event-vector.fires-bound",
            "with EVENT_IRQ, an update fires the vector its region is bound to (and only that one); rebinding moves it; regions may share a vector",
            Statement.V1(Vector, "The device MUST record the relationship between the ism region and the vector notified by the driver, and notify the driver based on the corresponding vector when the ism region is updated."),
            FiresBound),
        new("event-vector.errors",
            "EVENT_VECTOR for a region not attached to the device, or a vector beyond what the transport offers, is ERR",
            new Statement("vism issue 6 (Events.Irq), point 2", "binding a region not attached to this device, or a vector beyond what the transport offers, is ERR."),
            VectorErrors),
        new("event-vector.needs-irq",
            "a driver that did not negotiate EVENT_IRQ gets ERR for EVENT_VECTOR",
            new Statement("vism issue 6 (Events), point 4", "a driver that does not accept it gets no events and EVENT_VECTOR is ERR"),
            NeedsIrq),
        new("notify.window",
            "with an event feature, the NOTIFY window holds a notify_size slot for every region, the last one included",
            Statement.V1("Device Initialization, device normative", "If VIRTIO_ISM_F_EVENT_VQ or VIRTIO_ISM_F_EVENT_IRQ is negotiated, the device MUST also provides a shared memory with VIRTIO_ISM_SHM_ID_NOTIFY to the driver. This memory area is used for notify, and each ism region MUST have a corresponding notify address inside this area, and the size of the notify address is notify_size;"),
            NotifyWindow),
        new("notify.any-write",
            "with notify_size 16, a store that changes any byte of a region's notify slot, to 0 or to a non-zero value, reaches the peer",
            new Statement("vism issue 14, point 3",
                "Any write of any value anywhere in a region's notify slot signals an update, on every transport."),
            NotifyAnyWrite),
    ];

    /// <summary>A, B (and C) sharing one region allocated by A; each peer watches it.</summary>
    private static ulong[] Share(Rig rig, out ulong token)
    {
        (token, ulong a) = rig.A.Alloc();
        var at = new ulong[rig.Peers.Count];
        at[0] = a;
        for (int i = 1; i < at.Length; i++)
            at[i] = rig.Peers[i].Attach(token);
        for (int i = 0; i < at.Length; i++)
            rig.Peers[i].Updates.Watch(at[i]);
        return at;
    }

    private static void ReachPeer(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ctx.RequireAnyEventFeature(rig.A);
        ulong[] at = Share(rig, out _);
        rig.A.Client.Notify(at[0]);
        rig.B.Updates.Expect(at[1], "device a notified the shared region");
        rig.B.Client.Notify(at[1]);
        rig.A.Updates.Expect(at[0], "device b notified the shared region");
    }

    private static void NotWriter(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ctx.RequireAnyEventFeature(rig.A);
        ulong[] at = Share(rig, out _);
        rig.A.Client.Notify(at[0]);
        rig.B.Updates.Expect(at[1], "device a notified the shared region");
        rig.A.Updates.ExpectNone("device a wrote the notify slot itself");
    }

    private static void ThreeDevices(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Multi });
        ctx.RequireAnyEventFeature(rig.A);
        ulong[] at = Share(rig, out _);
        rig.A.Client.Notify(at[0]);
        rig.B.Updates.Expect(at[1], "device a notified the region the three share");
        rig.C.Updates.Expect(at[2], "device a notified the region the three share");
        rig.A.Updates.ExpectNone("device a wrote the notify slot itself");
        rig.C.Client.Notify(at[2]);
        rig.A.Updates.Expect(at[0], "device c notified the region the three share");
        rig.B.Updates.Expect(at[1], "device c notified the region the three share");
    }

    private static void NoneAfterDetach(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ctx.RequireAnyEventFeature(rig.A);
        ulong[] at = Share(rig, out ulong token);
        rig.B.Detach(at[1]);
        rig.A.Client.Notify(at[0]);
        rig.B.Updates.ExpectNone("device b detached the region before device a notified it");
        rig.B.Updates.Forget(at[1]);
        // The pair rule lets the previous guest attach again; then events come again.
        ulong b = rig.B.Attach(token);
        rig.B.Updates.Watch(b);
        rig.A.Client.Notify(at[0]);
        rig.B.Updates.Expect(b, "device b attached the region again and device a notified it");
    }

    private static void EventqRecord(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ctx.RequireOffered(rig.A, Features.IsmEventVq, "VIRTIO_ISM_F_EVENT_VQ");
        ctx.Expect(rig.B.Client.Driver.Queues.Count == 2, $"device b negotiated EVENT_VQ but the driver set up {rig.B.Client.Driver.Queues.Count} queue(s)");
        var mine = new Dictionary<ulong, ulong>();
        for (int i = 0; i < 3; i++)
        {
            (ulong token, ulong a) = rig.A.Alloc();
            mine[a] = rig.B.Attach(token);
        }
        foreach (ulong a in mine.Keys)
            rig.A.Client.Notify(a);
        var pending = new HashSet<ulong>(mine.Values);
        long deadline = Environment.TickCount64 + (long)ctx.Options.EventTimeout.TotalMilliseconds;
        while (pending.Count > 0)
        {
            long left = deadline - Environment.TickCount64;
            ctx.Expect(left > 0, $"device b's eventq did not report {string.Join(", ", pending.Select(o => $"0x{o:x}"))} within {ctx.Options.EventTimeout}");
            IReadOnlyList<ulong>? record = rig.B.Client.WaitEvent(TimeSpan.FromMilliseconds(left));
            if (record is null) continue;
            ctx.Expect(record.Count > 0, "device b received an event record with num = 0");
            foreach (ulong o in record)
            {
                ctx.Expect(mine.ContainsValue(o), $"device b's event record names offset 0x{o:x}, which is none of its regions ({string.Join(", ", mine.Values.Select(v => $"0x{v:x}"))})");
                pending.Remove(o);
            }
        }
    }

    private static void EventqOnlyWithEventVq(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ctx.RequireOffered(rig.A, Features.IsmEventVq, "VIRTIO_ISM_F_EVENT_VQ");
        ctx.Expect(rig.B.Client.Driver.Queues.Count == 2 && rig.B.Client.Driver.Has(Features.IsmEventVq),
            "with EVENT_VQ negotiated the driver did not get an eventq (queue 1) set up");
        ulong[] at = Share(rig, out _);
        rig.A.Client.Notify(at[0]);
        rig.B.Updates.Expect(at[1], "device a notified the shared region");

        // A driver that declines EVENT_VQ sets up the controlq alone; the device must run with it.
        rig.B.Restart(ctx.DefaultDriver with { EventVq = false });
        ctx.Expect(!rig.B.Client.Driver.Has(Features.IsmEventVq) && rig.B.Client.Driver.Queues.Count == 1,
            "declining EVENT_VQ, the driver still set up an eventq");
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        rig.A.Client.Notify(a);
        rig.A.Client.Notify(at[0]);
        rig.Settle();
        DeviceStatus status = rig.B.Client.Transport.ReadStatus();
        ctx.Expect((status & DeviceStatus.DeviceNeedsReset) == 0, "without an eventq, a peer's notify put the device into DEVICE_NEEDS_RESET");
        rig.B.Detach(b);
        rig.B.Alloc();
    }

    private static void FiresBound(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ctx.RequireOffered(rig.A, Features.IsmEventIrq, "VIRTIO_ISM_F_EVENT_IRQ");
        IsmClient b = rig.B.Client;
        if (b.Transport.VectorCount < 2)
            ctx.Skip($"the transport offers device b {b.Transport.VectorCount} vector(s); the check needs 2",
                $"configure transport '{ctx.Combination.Transport}' to offer at least 2 per-region vectors");
        (ulong t1, ulong a1) = rig.A.Alloc();
        (ulong t2, ulong a2) = rig.A.Alloc();
        ulong b1 = rig.B.Attach(t1);
        ulong b2 = rig.B.Attach(t2);
        Bind(rig.B, b1, 0);
        Bind(rig.B, b2, 1);
        rig.A.Client.Notify(a2);
        ExpectVector(ctx, b, 1, "region 2 (bound to vector 1) was notified");
        ctx.Expect(!b.WaitVector(0, ctx.Options.QuietWindow), "vector 0 fired although only the region bound to vector 1 was notified");
        rig.A.Client.Notify(a1);
        ExpectVector(ctx, b, 0, "region 1 (bound to vector 0) was notified");
        Bind(rig.B, b1, 1); // now both regions share vector 1
        rig.A.Client.Notify(a1);
        ExpectVector(ctx, b, 1, "region 1 was bound again, to vector 1, and notified");
        ctx.Expect(!b.WaitVector(0, ctx.Options.QuietWindow), "vector 0 fired although region 1 was bound again to vector 1");
    }

    private static void Bind(Peer peer, ulong offset, ulong vector)
    {
        byte ack = peer.Client.EventVector(offset, vector);
        if (ack != IsmControl.AckOk)
            throw new CheckEndedException(Outcome.Failed, $"device {peer.Name}: EVENT_VECTOR binding 0x{offset:x} to vector {vector} answered ack {ack}, expected OK ({peer.Errors()})");
    }

    private static void ExpectVector(CheckContext ctx, IsmClient client, int vector, string why) =>
        ctx.Expect(client.WaitVector(vector, ctx.Options.EventTimeout), $"vector {vector} did not fire within {ctx.Options.EventTimeout} after {why}");

    private static void VectorErrors(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ctx.RequireOffered(rig.A, Features.IsmEventIrq, "VIRTIO_ISM_F_EVENT_IRQ");
        IsmClient b = rig.B.Client;
        int vectors = b.Transport.VectorCount;
        rig.B.ExpectErr(b.EventVector(0, 0), "EVENT_VECTOR for offset 0 with no region attached");
        ulong token = rig.A.Alloc().Token;
        ulong at = rig.B.Attach(token);
        ulong empty = at == 0 ? b.RegionSize : 0;
        rig.B.ExpectErr(b.EventVector(empty, 0), $"EVENT_VECTOR for the empty slot at 0x{empty:x}");
        rig.B.ExpectErr(b.EventVector(at, (ulong)vectors), $"EVENT_VECTOR to vector {vectors}; the transport offers {vectors}");
        rig.B.ExpectErr(b.EventVector(at, ulong.MaxValue), "EVENT_VECTOR to vector 2^64 - 1");
        if (vectors > 0)
            Bind(rig.B, at, (ulong)(vectors - 1));
    }

    private static void NeedsIrq(CheckContext ctx)
    {
        Rig rig = ctx.Compose(driver: ctx.NoEventDriver);
        ulong token = rig.A.Alloc().Token;
        ulong at = rig.B.Attach(token);
        ctx.Expect(!rig.B.Client.Driver.Has(Features.IsmEventIrq), "the driver declined EVENT_IRQ but it was negotiated");
        rig.B.ExpectErr(rig.B.Client.EventVector(at, 0), "EVENT_VECTOR without VIRTIO_ISM_F_EVENT_IRQ negotiated");
    }

    private static void NotifyWindow(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ctx.RequireAnyEventFeature(rig.A);
        IsmClient a = rig.A.Client;
        ulong slots = a.Transport.ShmLength(ShmId.Regions) / a.RegionSize;
        ulong notify = a.Transport.ShmLength(ShmId.Notify);
        ctx.Expect(notify > 0, "an event feature was negotiated but the device has no NOTIFY window (shmid 2)");
        ctx.Expect(notify >= slots * a.NotifySize,
            $"the {notify}-byte NOTIFY window cannot hold a {a.NotifySize}-byte notify address for each of the {slots} regions");
        // Fill device a's window so that its last slot holds a region, and share that region with
        // device b when b has one slot left: both notify through a notify address at the window's end.
        var own = new List<(ulong Token, ulong Offset)>();
        for (ulong i = 0; i < slots; i++)
            own.Add(rig.A.Alloc());
        (ulong token, ulong last) = own.MaxBy(r => r.Offset);
        ctx.Expect(last == (slots - 1) * a.RegionSize, $"with every slot allocated, the highest region offset is 0x{last:x}, not the last slot 0x{(slots - 1) * a.RegionSize:x}");
        for (ulong i = 1; i < slots; i++)
            rig.B.Alloc();
        ulong b = rig.B.Attach(token);
        rig.A.Updates.Watch(last);
        rig.B.Updates.Watch(b);
        rig.A.Client.Notify(last);
        rig.B.Updates.Expect(b, $"device a notified its last region slot (0x{last:x}) at notify address {last / a.RegionSize * a.NotifySize}");
        rig.B.Client.Notify(b);
        rig.A.Updates.Expect(last, $"device b notified the region at its offset 0x{b:x}");
    }

    private static void NotifyAnyWrite(CheckContext ctx)
    {
        const ulong SlotSize = 16;
        Rig rig = ctx.Compose(new HostSpec { NotifySize = SlotSize });
        ctx.RequireAnyEventFeature(rig.A);
        ctx.Expect(rig.A.Client.NotifySize == SlotSize, $"notify_size is {rig.A.Client.NotifySize}, the device was configured with {SlotSize}");
        ulong[] at = Share(rig, out _);
        ulong slot = at[0] / rig.A.Client.RegionSize * SlotSize;
        var missed = new List<string>();
        // Every byte gets a non-zero value and then 0 again: each store changes the slot, so a
        // polled window must see it as well as a trapped one (a store of the value a byte already
        // holds changes nothing in memory; the transport README tells drivers to change the slot).
        for (ulong i = 0; i < SlotSize; i++)
            foreach (byte value in new byte[] { 0x5a, 0 })
            {
                rig.A.Client.Transport.WriteNotify(slot + i, value);
                if (!rig.B.Updates.WaitFor(at[1], ctx.Options.EventTimeout / 10))
                    missed.Add($"value 0x{value:x2} at byte {i}");
            }
        ctx.Expect(missed.Count == 0,
            $"device b got no update event after device a wrote its notify slot with {string.Join(", ", missed)} " +
            $"(of {2 * SlotSize} writes; transport '{ctx.Combination.Transport}')");
    }
}
