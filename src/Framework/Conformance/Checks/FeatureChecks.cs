using Vism.Abstractions;
using Vism.Conformance.Composition;
using Vism.Core;
using Vism.Driver;

namespace Vism.Conformance.Checks;

/// <summary>Feature negotiation variants (EVENT_VQ only, EVENT_IRQ only, neither) and what a dead peer leaves behind.</summary>
internal static class FeatureChecks
{
    private const string FeatureBits = "Feature bits";
    private const string DeadPeer = "Decisions, A dead peer";
    private const string DeadPeerText = "A dead peer (socket closed, VMM killed) releases all of its attachments; a region is freed when its last reference goes; other devices keep working.";

    public static IEnumerable<ConformanceCheck> All =>
    [
        new("features.offered",
            "the device offers VERSION_1 and, exactly when it has an events plugin, an event feature",
            Statement.V1(FeatureBits, "VIRTIO_ISM_F_EVENT_VQ (0) The ISM driver uses eventq to receive the ism regions update event. VIRTIO_ISM_F_EVENT_IRQ (1) Each ism region is directly bound to an interrupt to receive update events."),
            Offered),
        new("features.event-vq-only",
            "a driver accepting EVENT_VQ alone negotiates it, gets an eventq, and receives updates there",
            Statement.V1("Device Initialization, driver normative", "If VIRTIO_ISM_F_EVENT_VQ is negotiated, then the driver MUST initialize eventq to get update events for the ism region."),
            ctx => Variant(ctx, eventVq: true, eventIrq: false)),
        new("features.event-irq-only",
            "a driver accepting EVENT_IRQ alone negotiates it, binds vectors, and receives updates on them",
            Statement.V1("Device Initialization, driver normative", "If VIRTIO_ISM_F_EVENT_IRQ is negotiated, the driver MUST initiate interrupts to obtain update events for the ism region. And the driver MUST inform the device the interrupt vectors for one ism region."),
            ctx => Variant(ctx, eventVq: false, eventIrq: true)),
        new("features.event-irq-usable",
            "with the plugins' defaults, a device offering EVENT_IRQ has vectors: EVENT_VECTOR binds an attached region to vector 0 and an update fires it",
            new Statement("vism issue 14, point 1", "EVENT_IRQ offered but unusable on vhost-user by default. [...] a device with events = irq on vhost-user offers VIRTIO_ISM_F_EVENT_IRQ and then refuses every EVENT_VECTOR."),
            EventIrqUsable),
        new("features.neither",
            "a driver accepting no event feature drives every region operation and is never signalled",
            new Statement("vism issue 6 (Events), point 4", "Feature negotiation: each plugin offers its feature bit; a driver that does not accept it gets no events and EVENT_VECTOR is ERR"),
            ctx => Variant(ctx, eventVq: false, eventIrq: false)),
        new("disconnect.peer",
            "a killed peer's attachments are released; the other devices keep sharing, notifying, allocating; it reconnects with its devid",
            Statement.Design(DeadPeer, DeadPeerText),
            PeerKilled),
        new("disconnect.owner",
            "when the allocating device's VMM dies, the attached peer keeps the region until it detaches",
            Statement.Design(DeadPeer, DeadPeerText),
            OwnerKilled),
    ];

    private const ulong EventBits = (1UL << Features.IsmEventVq) | (1UL << Features.IsmEventIrq);

    private static void Offered(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        ulong offered = rig.A.Client.Driver.DeviceFeatures;
        ctx.Expect(Features.Has(offered, Features.Version1), $"the device does not offer VIRTIO_F_VERSION_1 (features 0x{offered:x})");
        if (ctx.Combination.HasEvents)
            ctx.Expect((offered & EventBits) != 0, $"events kind '{ctx.Combination.Events}' is composed but the device offers no event feature (features 0x{offered:x})");
        else
            ctx.Expect((offered & EventBits) == 0, $"the device has no events plugin but offers event features 0x{offered & EventBits:x}");
        ulong negotiated = rig.A.Client.Driver.Features;
        ctx.Expect((negotiated & ~offered) == 0, $"the negotiated features 0x{negotiated:x} are not a subset of the offered 0x{offered:x}");
    }

    private static void EventIrqUsable(CheckContext ctx)
    {
        Rig rig = ctx.Compose(driver: ctx.DefaultDriver with { EventVq = false, EventIrq = true });
        ctx.RequireOffered(rig.A, Features.IsmEventIrq, "VIRTIO_ISM_F_EVENT_IRQ");
        (ulong token, ulong mine) = rig.A.Alloc();
        ulong at = rig.B.Attach(token);
        int vectors = rig.B.Client.Transport.VectorCount;
        byte ack = rig.B.Client.EventVector(at, 0);
        ctx.Expect(ack == IsmControl.AckOk,
            $"device b offers VIRTIO_ISM_F_EVENT_IRQ but EVENT_VECTOR(region, vector 0) answered ack {ack} ({rig.B.Errors()}); " +
            $"the transport offers {vectors} vector(s) with its default options, so the feature is unusable");
        rig.A.Client.Notify(mine);
        ctx.Expect(rig.B.Client.WaitVector(0, ctx.Options.EventTimeout), $"vector 0 did not fire within {ctx.Options.EventTimeout.TotalSeconds:0.#} s after device a notified the region bound to it");
    }

    private static void Variant(CheckContext ctx, bool eventVq, bool eventIrq)
    {
        IsmClientOptions driver = ctx.DefaultDriver with { EventVq = eventVq, EventIrq = eventIrq };
        Rig rig = ctx.Compose(driver: driver);
        ulong offered = rig.A.Client.Driver.DeviceFeatures;
        if (eventVq && !Features.Has(offered, Features.IsmEventVq))
            ctx.NotApplicable($"the device does not offer VIRTIO_ISM_F_EVENT_VQ (events kind '{ctx.Combination.Events}')");
        if (eventIrq && !Features.Has(offered, Features.IsmEventIrq))
            ctx.NotApplicable($"the device does not offer VIRTIO_ISM_F_EVENT_IRQ (events kind '{ctx.Combination.Events}')");
        ulong accepted = (eventVq ? Features.Mask(Features.IsmEventVq) : 0) | (eventIrq ? Features.Mask(Features.IsmEventIrq) : 0);
        foreach (Peer p in rig.Peers)
        {
            ulong got = p.Client.Driver.Features & EventBits;
            ctx.Expect(got == (offered & accepted), $"device {p.Name} negotiated event features 0x{got:x}; the driver accepted 0x{accepted:x} of 0x{offered & EventBits:x} offered");
            ctx.Expect(p.Client.Driver.Queues.Count == (eventVq ? 2 : 1), $"device {p.Name}: the driver set up {p.Client.Driver.Queues.Count} queue(s)");
        }
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        byte[] mark = Patterns.Mark("a", 1);
        rig.A.Write(a, mark);
        Patterns.ExpectSame(ctx, mark, rig.B.Read(b, 64), "device b reading the shared region");
        rig.B.Updates.Watch(b);
        rig.A.Client.Notify(a);
        if (eventVq || eventIrq)
            rig.B.Updates.Expect(b, "device a notified the shared region");
        else
        {
            rig.B.ExpectErr(rig.B.Client.EventVector(b, 0), "EVENT_VECTOR without an event feature negotiated");
            rig.Settle();
            DeviceStatus status = rig.B.Client.Transport.ReadStatus();
            ctx.Expect((status & DeviceStatus.DeviceNeedsReset) == 0, "a peer's notify put the device without event features into DEVICE_NEEDS_RESET");
        }
        rig.B.Detach(b);
        rig.A.Detach(a);
    }

    private static void PeerKilled(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Multi });
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        ulong c = rig.C.Attach(token);
        ulong killedDevId = rig.B.DevId;
        rig.B.Kill();
        WaitReleased(ctx, rig, killedDevId);
        bool events = (rig.A.Client.Driver.Features & EventBits) != 0;
        if (events)
        {
            rig.C.Updates.Watch(c);
            rig.A.Client.Notify(a);
            rig.C.Updates.Expect(c, "device a notified after device b's VMM died");
        }
        byte[] mark = Patterns.Mark("c", 1);
        rig.C.Write(c, mark);
        Patterns.ExpectSame(ctx, mark, rig.A.Read(a, 64), "device a reading what device c wrote after device b's VMM died");
        ulong spare = rig.A.Alloc().Offset;
        rig.A.Detach(spare);
        rig.B.Connect();
        ctx.Expect(rig.B.DevId == killedDevId, $"device b reconnected with devid {rig.B.DevId}, before {killedDevId}");
        b = rig.B.Attach(token);
        Patterns.ExpectSame(ctx, mark, rig.B.Read(b, 64), "device b reading the region after reconnecting and attaching again");
    }

    private static void OwnerKilled(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        byte[] mark = Patterns.Mark("a", 1);
        rig.A.Write(a, mark);
        ulong owner = rig.A.DevId;
        rig.A.Kill();
        WaitReleased(ctx, rig, owner);
        Patterns.ExpectSame(ctx, mark, rig.B.Read(b, 64), "device b reading the region after the allocating device's VMM died");
        rig.B.Write(b, Patterns.Mark("b", 2));
        ctx.Expect(rig.Snapshot().Regions.Count == 1, "the region is gone although device b still references it");
        rig.B.Detach(b);
        HostSnapshot after = rig.Snapshot();
        ctx.Expect(after.Regions.Count == 0, "the region is still listed after its last reference was detached");
        ctx.Expect(after.Devices[0].Memory.Used == 0, $"device a's memory still holds {after.Devices[0].Memory.Used} bytes after the region's last reference went");
        rig.B.ExpectErr(rig.B.Client.Attach(token).Ack, "ATTACH with the token of a released region");
    }

    /// <summary>Waits until the host lists no reference of <paramref name="devId"/> (the transport
    /// noticed the closed connection on its loop).</summary>
    private static void WaitReleased(CheckContext ctx, Rig rig, ulong devId)
    {
        long deadline = Environment.TickCount64 + (long)ctx.Options.EventTimeout.TotalMilliseconds;
        while (true)
        {
            HostSnapshot s = rig.Snapshot();
            int held = s.Regions.Sum(r => r.References.Count(x => x.DevId == devId));
            bool connected = s.Devices.Any(d => d.DevId == devId && d.Connected);
            if (held == 0 && !connected)
                return;
            ctx.Expect(Environment.TickCount64 < deadline,
                $"{ctx.Options.EventTimeout.TotalSeconds:0} s after devid {devId}'s VMM died the host still shows it {(connected ? "connected" : "disconnected")} with {held} reference(s)");
            Thread.Sleep(20);
        }
    }
}
