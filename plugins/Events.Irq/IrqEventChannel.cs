using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Events.Shared;

namespace Vism.Events.Irq;

/// <summary>
/// VIRTIO_ISM_F_EVENT_IRQ: the driver binds each region to an interrupt vector with EVENT_VECTOR;
/// an update of the region fires that vector on this device. Several regions may share a vector.
/// </summary>
/// <remarks>
/// Vectors are the transport's per-region vectors, numbered from 0 (<see cref="IEventContext.VectorCount"/>;
/// MMIO: one eventfd per vector; vhost-user: the call fd of an extra queue per vector). Binding a
/// vector at or above that count is refused (ERR). An update marks its region <em>raised</em>; at
/// once (in the loop turn that routed the update, or after <see cref="IrqEventOptions.BatchDelay"/>) every vector with a
/// raised region fires once. A region raised again before that, or a vector already firing for
/// another region, folds into the same interrupt (<c>events.folded</c>), so a vector never fires
/// more often than its regions were updated. A detach clears the region's binding and its raised
/// mark, so a vector fires for a region only while the device references it. An update of a
/// region with no binding yet is held (fired at bind) or dropped, as <see cref="IrqEventOptions.Unbound"/>
/// says; either way it is counted (<c>events.irq.unbound</c>). All members run on the device's loop.
/// </remarks>
public sealed class IrqEventChannel : IEventChannel
{
    private const int Unbound = -1;

    private readonly IrqEventOptions _options;
    private readonly DeviceDescription _device;
    private readonly DeferredFlush _flush;
    private readonly int[] _vectorOf;
    private readonly bool[] _held;
    private readonly bool[] _raised;
    private readonly List<int> _raisedSlots = [];
    private readonly List<int> _firing = [];
    private bool[] _vectorFiring = [];
    private IEventContext? _context;
    private bool _disposed;

    /// <summary>Creates the channel for one device (the host does, through DI).</summary>
    /// <param name="options">The <c>[device.events]</c> options.</param>
    /// <param name="device">The device's layout (region size, max regions).</param>
    /// <param name="loop">The device's loop.</param>
    /// <param name="log">Where refusals are logged.</param>
    public IrqEventChannel(IrqEventOptions options, DeviceDescription device, IDeviceLoop loop, ILogger<IrqEventChannel> log)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(loop);
        ArgumentNullException.ThrowIfNull(log);
        _options = options;
        _device = device;
        _flush = new DeferredFlush(loop, options.BatchDelay, Flush);
        _vectorOf = new int[device.MaxRegions];
        _held = new bool[device.MaxRegions];
        _raised = new bool[device.MaxRegions];
        Array.Fill(_vectorOf, Unbound);
    }

    /// <inheritdoc />
    public ulong Features => Vism.Abstractions.Features.Mask(Vism.Abstractions.Features.IsmEventIrq);

    /// <inheritdoc />
    public int QueueCount => 0;

    /// <summary>Whether the driver's features activated the channel (loop thread).</summary>
    public bool IsActive => _context is not null;

    /// <summary>The vector the region at <paramref name="offset"/> is bound to, or null (loop thread).</summary>
    /// <param name="offset">A region offset.</param>
    public int? VectorOf(ulong offset)
    {
        ulong size = _device.RegionSize;
        if (size == 0 || offset % size != 0 || offset / size >= (ulong)_vectorOf.Length)
            return null;
        int vector = _vectorOf[(int)(offset / size)];
        return vector != Unbound ? vector : null;
    }

    /// <inheritdoc />
    public void Activate(IEventContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        ObjectDisposedException.ThrowIf(_disposed, this);
        Clear();
        _context = context;
        _vectorFiring = new bool[Math.Max(0, context.VectorCount)];
    }

    /// <inheritdoc />
    public void Deactivate()
    {
        Clear();
        _context = null;
    }

    /// <inheritdoc />
    public void OnRegionUpdated(RegionSlot region)
    {
        if (_context is not { } context)
            return;
        int slot = region.Index;
        if (_vectorOf[slot] != Unbound)
        {
            Raise(context, slot);
            return;
        }
        context.Counters.Increment("events.irq.unbound");
        if (_options.Unbound == UnboundUpdates.Drop)
        {
            context.Counters.Increment("events.irq.dropped-unbound");
            return;
        }
        if (_held[slot])
            context.Counters.Increment("events.folded");
        _held[slot] = true;
    }

    /// <inheritdoc />
    public void OnRegionDetached(RegionSlot region)
    {
        if (_context is not { } context)
            return;
        int slot = region.Index;
        if (_raised[slot] || _held[slot])
            context.Counters.Increment("events.irq.dropped-detached");
        _raised[slot] = false;
        _held[slot] = false;
        _vectorOf[slot] = Unbound;
    }

    /// <inheritdoc />
    public bool TryBindVector(RegionSlot region, ulong vector, out Refusal refusal)
    {
        IEventContext? context = _context;
        if (context is null)
            return Refuse("the irq event channel is not active (VIRTIO_ISM_F_EVENT_IRQ not negotiated or the device is not running)", out refusal);
        int count = _vectorFiring.Length;
        if (count == 0)
            return Refuse("the transport offers no per-region vectors (its vector count is 0)", out refusal);
        if (vector >= (ulong)count)
            return Refuse($"vector {vector} is not below the {count} per-region vectors the transport offers", out refusal);
        refusal = default;
        int slot = region.Index;
        _vectorOf[slot] = (int)vector;
        context.Counters.Increment("events.irq.bound");
        if (_held[slot])
        {
            _held[slot] = false;
            context.Counters.Increment("events.irq.fired-on-bind");
            Raise(context, slot);
        }
        return true;
    }

    private static bool Refuse(string detail, out Refusal refusal)
    {
        refusal = new Refusal(IEventChannel.EventVectorRejected, detail);
        return false;
    }

    /// <inheritdoc />
    public void OnQueueNotified(int queueIndex)
    {
        // The irq channel has no queues.
    }

    private void Raise(IEventContext context, int slot)
    {
        if (_raised[slot])
        {
            context.Counters.Increment("events.folded");
            return;
        }
        _raised[slot] = true;
        _raisedSlots.Add(slot);
        _flush.Request();
    }

    /// <summary>Fires every vector that has a raised region still bound to it, once.</summary>
    private void Flush()
    {
        IEventContext? context = _context;
        if (context is null)
            return;
        foreach (int slot in _raisedSlots)
        {
            if (!_raised[slot])
                continue; // detached since it was raised (or listed twice after a re-attach)
            _raised[slot] = false;
            int vector = _vectorOf[slot];
            if (vector == Unbound)
                continue;
            if (_vectorFiring[vector])
            {
                context.Counters.Increment("events.folded");
                continue;
            }
            _vectorFiring[vector] = true;
            _firing.Add(vector);
        }
        _raisedSlots.Clear();
        foreach (int vector in _firing)
        {
            _vectorFiring[vector] = false;
            context.SignalVector(vector);
        }
        if (_firing.Count > 0)
            context.Counters.Increment("events.irq.fired", _firing.Count);
        _firing.Clear();
    }

    private void Clear()
    {
        _flush.Cancel();
        Array.Fill(_vectorOf, Unbound);
        Array.Clear(_held);
        Array.Clear(_raised);
        _raisedSlots.Clear();
        _firing.Clear();
        Array.Clear(_vectorFiring);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        Clear();
        _context = null;
    }
}
