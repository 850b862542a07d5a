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
    /// <param name="offset">The region's offset in this device's REGIONS window.</param>
    void OnRegionUpdated(ulong offset);

    /// <summary>This device no longer references the region at <paramref name="offset"/>:
    /// drop its pending events and its vector binding. Default: nothing (a channel that keeps no
    /// per-region state has nothing to drop).</summary>
    /// <param name="offset">The region's offset in this device's REGIONS window.</param>
    void OnRegionDetached(ulong offset)
    {
    }

    /// <summary>EVENT_VECTOR: bind the region at <paramref name="offset"/> (already checked to be
    /// attached to this device) to <paramref name="vector"/>.</summary>
    /// <param name="offset">The region's offset in this device's REGIONS window.</param>
    /// <param name="vector">The vector the driver chose.</param>
    /// <param name="failure">The reason, when it returns false (the ack is then ERR).</param>
    /// <returns>Whether the binding was recorded.</returns>
    /// <remarks>Default: refuses (ERR ack) with "this event channel binds no vectors", the answer of
    /// a channel that does not offer VIRTIO_ISM_F_EVENT_IRQ.</remarks>
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
