using Vism.Abstractions;
using Vism.Driver;

namespace Vism.Conformance.Checks;

/// <summary>What a hostile controlq ring costs the device and its neighbours.</summary>
internal static class RingChecks
{
    public static IEnumerable<ConformanceCheck> All =>
    [
        new("ring.chain-over-queue-size",
            "a controlq chain whose indirect table is longer than the queue is refused unread: the device needs a reset and answers nothing, the other device is served, a reset brings it back",
            new Statement("vism issue 13, point 4", "A device gets a bounded share of its loop per turn (descriptors walked, requests served); a flooding device cannot delay a neighbour's control request on the same loop by more than a few milliseconds."),
            ChainOverQueueSize),
    ];

    /// <summary>Virtio: "A driver MUST NOT create a descriptor chain longer than the Queue Size of the
    /// device". One such chain must not be walked (32,768 entries took ~1.3 ms each) nor answered.</summary>
    private static void ChainOverQueueSize(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        IsmClient client = rig.A.Client;
        if (!Features.Has(client.Driver.Features, Features.RingIndirectDesc))
            ctx.NotApplicable($"the device does not offer VIRTIO_F_INDIRECT_DESC (transport '{ctx.Combination.Transport}')");
        DriverQueue q = client.Driver.Queues[Virtio.ControlQueue];
        ushort used = q.UsedIndex;
        uint entries = q.Size + 1u;
        // Well-formed but for its length (an old walker answered it with ERR).
        ulong table = ControlqFlood.WriteIndirectTable(q, client.Transport.Ram, (int)entries);
        q.RawDescriptor(0, table, 16 * entries, DriverQueue.DescIndirect, 0);
        q.RawPublish(0);
        client.Transport.Kick(Virtio.ControlQueue);

        bool needsReset = SpinWait.SpinUntil(() => (client.Transport.ReadStatus() & DeviceStatus.DeviceNeedsReset) != 0, ctx.Options.EventTimeout);
        ctx.Expect(needsReset, $"device a did not set DEVICE_NEEDS_RESET within {ctx.Options.EventTimeout.TotalSeconds:0.#} s after a chain of {entries} descriptors in a {q.Size}-entry queue ({rig.A.Errors()})");
        ctx.Expect(q.UsedIndex == used, $"device a answered the chain of {entries} descriptors (used index {used} -> {q.UsedIndex}) instead of refusing it");
        string errors = rig.A.Errors();
        ctx.Expect(errors == "(counters not visible)" || errors.Contains("err.ring.chain-over-queue-size=1", StringComparison.Ordinal),
            $"device a counted {errors}, expected err.ring.chain-over-queue-size=1");

        (_, ulong offset) = rig.B.Alloc();
        rig.B.Detach(offset);
        rig.A.Restart();
        (_, ulong again) = rig.A.Alloc();
        rig.A.Detach(again);
    }
}
