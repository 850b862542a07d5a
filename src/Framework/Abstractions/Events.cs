using Microsoft.Extensions.Logging;

namespace Vism.Abstractions;

/// <summary>
/// An event plugin: how a device tells its driver that a peer updated a shared region.
/// One instance per device, created through DI with its options type. Called on the device's loop.
/// </summary>
public interface IEventChannel : IDisposable
{
    /// <summary>Feature bits (a mask) this channel offers, e.g. 1 &lt;&lt; <see cref="Features.IsmEventVq"/>.</summary>
    ulong Features { get; }

    /// <summary>Virtqueues this channel uses after the controlq (1 for the eventq, otherwise 0).
    /// Default 0: a channel without a queue of its own (per-region interrupts).</summary>
    int QueueCount => 0;

    /// <summary>The driver set DRIVER_OK. <paramref name="context"/> is valid until <see cref="Deactivate"/>.
    /// Not called when the driver accepted none of <see cref="Features"/>.</summary>
    /// <param name="context">Negotiated features, queues and interrupt vectors of this connection.</param>
    void Activate(IEventContext context);

    /// <summary>The device was reset or the driver disconnected: drop pending events and bindings.</summary>
    void Deactivate();

    /// <summary>A peer updated a region this device references.</summary>
    /// <param name="region">The region's slot and its offset in this device's REGIONS window.</param>
    /// <remarks>Default: calls the obsolete <see cref="OnRegionUpdated(ulong)"/>, so a channel
    /// written against contract revision 1.0 keeps working. Implement this one.</remarks>
#pragma warning disable CS0618 // the defaults forward to the members they replace
    void OnRegionUpdated(RegionSlot region) => OnRegionUpdated(region.Offset);

    /// <summary>This device no longer references the region in <paramref name="region"/>: drop its
    /// pending events and its vector binding.</summary>
    /// <param name="region">The region's slot and its offset in this device's REGIONS window.</param>
    /// <remarks>Default: calls the obsolete <see cref="OnRegionDetached(ulong)"/>, whose own default
    /// does nothing (a channel that keeps no per-region state has nothing to drop).</remarks>
    void OnRegionDetached(RegionSlot region) => OnRegionDetached(region.Offset);

    /// <summary>EVENT_VECTOR: bind the region in <paramref name="region"/> (already checked to be
    /// attached to this device) to <paramref name="vector"/>.</summary>
    /// <param name="region">The region's slot and its offset in this device's REGIONS window.</param>
    /// <param name="vector">The vector the driver chose.</param>
    /// <param name="refusal">Why not, when it returns false: the device acks ERR, counts
    /// <c>err.</c> + <see cref="Refusal.Counter"/> and logs <see cref="Refusal.Detail"/>
    /// (<see cref="EventVectorRejected"/> is the counter of a channel with nothing more specific).</param>
    /// <returns>Whether the binding was recorded.</returns>
    /// <remarks>Default: calls the obsolete <see cref="TryBindVector(ulong, ulong, out string?)"/>
    /// and reports its reason under <see cref="EventVectorRejected"/>; that one's own default
    /// refuses with "this event channel binds no vectors", the answer of a channel that does not
    /// offer VIRTIO_ISM_F_EVENT_IRQ.</remarks>
    bool TryBindVector(RegionSlot region, ulong vector, out Refusal refusal)
    {
        if (TryBindVector(region.Offset, vector, out string? failure))
        {
            refusal = default;
            return true;
        }
        refusal = new Refusal(EventVectorRejected, failure ?? "the event channel refused the vector");
        return false;
    }
#pragma warning restore CS0618

    /// <summary>The counter of an EVENT_VECTOR an event channel refused without a more specific name.</summary>
    const string EventVectorRejected = "event-vector.rejected";

    /// <summary>Contract 1.0: a peer updated the region at <paramref name="offset"/>.</summary>
    /// <param name="offset">The region's offset in this device's REGIONS window.</param>
    /// <remarks>The host calls <see cref="OnRegionUpdated(RegionSlot)"/>, which carries the slot
    /// too; this is only what that member's default forwards to. Default: throws
    /// <see cref="NotSupportedException"/> (a channel must implement one of the two).</remarks>
    [Obsolete("Implement OnRegionUpdated(RegionSlot): it carries the region's slot as well as its offset.")]
    void OnRegionUpdated(ulong offset) =>
        throw new NotSupportedException($"{GetType().Name} implements neither OnRegionUpdated(RegionSlot) nor OnRegionUpdated(ulong)");

    /// <summary>Contract 1.0: the device no longer references the region at <paramref name="offset"/>.</summary>
    /// <param name="offset">The region's offset in this device's REGIONS window.</param>
    /// <remarks>What <see cref="OnRegionDetached(RegionSlot)"/>'s default forwards to. Default: nothing.</remarks>
    [Obsolete("Implement OnRegionDetached(RegionSlot): it carries the region's slot as well as its offset.")]
    void OnRegionDetached(ulong offset)
    {
    }

    /// <summary>Contract 1.0: EVENT_VECTOR for the region at <paramref name="offset"/>.</summary>
    /// <param name="offset">The region's offset in this device's REGIONS window.</param>
    /// <param name="vector">The vector the driver chose.</param>
    /// <param name="failure">The reason, when it returns false.</param>
    /// <returns>Whether the binding was recorded.</returns>
    /// <remarks>What <see cref="TryBindVector(RegionSlot, ulong, out Refusal)"/>'s default forwards
    /// to. Default: refuses with "this event channel binds no vectors".</remarks>
    [Obsolete("Implement TryBindVector(RegionSlot, ulong, out Refusal): it carries the region's slot and reports a Refusal.")]
    bool TryBindVector(ulong offset, ulong vector, out string? failure)
    {
        failure = "this event channel binds no vectors";
        return false;
    }

    /// <summary>The driver kicked one of this channel's queues (it posted buffers). Default:
    /// nothing (a channel with no queue of its own is never kicked).</summary>
    /// <param name="queueIndex">The queue index.</param>
    void OnQueueNotified(int queueIndex)
    {
    }
}

/// <summary>What an active event channel may use.</summary>
public interface IEventContext
{
    /// <summary>The features the driver accepted.</summary>
    ulong NegotiatedFeatures { get; }

    /// <summary>The virtqueue at <paramref name="index"/> (the eventq is <see cref="Virtio.EventQueue"/>).</summary>
    /// <param name="index">Queue index.</param>
    /// <returns>The queue, or null when it does not exist.</returns>
    IVirtqueue? GetQueue(int index);

    /// <summary>Interrupt vectors the transport offers for per-region IRQ.</summary>
    int VectorCount { get; }

    /// <summary>Fires a per-region interrupt vector.</summary>
    /// <param name="vector">Vector number below <see cref="VectorCount"/>.</param>
    void SignalVector(int vector);

    /// <summary>Per-device counters (shown by <c>vism status</c>).</summary>
    IDeviceCounters Counters { get; }

    /// <summary>The device's logger.</summary>
    ILogger Log { get; }

    /// <summary>The driver's memory for this connection: what <see cref="DescriptorChain.Write"/>
    /// and <see cref="DescriptorChain.Read"/> need for chains popped from <see cref="GetQueue"/>.
    /// Read it when you use it, on the loop; the transport may replace it between loop turns.</summary>
    IGuestMemory Memory { get; }
}

/// <summary>Named per-device counters: ERR reasons, folded events, and anything a plugin wants visible.</summary>
public interface IDeviceCounters
{
    /// <summary>Adds <paramref name="by"/> to the counter <paramref name="name"/>. Thread-safe.</summary>
    /// <param name="name">A short dotted name, e.g. <c>events.folded</c>.</param>
    /// <param name="by">The increment.</param>
    void Increment(string name, long by = 1);

    /// <summary>The current value of <paramref name="name"/> (0 when never incremented).</summary>
    /// <param name="name">The counter name.</param>
    long Get(string name);
}
