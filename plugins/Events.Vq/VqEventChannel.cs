using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Events.Shared;

namespace Vism.Events.Vq;

/// <summary>
/// VIRTIO_ISM_F_EVENT_VQ: tells the driver which regions peers updated by filling the buffers it
/// posts on the eventq (queue 1) with <c>struct virtio_ism_event { le64 num; le64 offset[]; }</c>.
/// </summary>
/// <remarks>
/// Every update makes its region <em>pending</em>. A region that is already pending is not added
/// again (the update is folded into it and counted as <c>events.folded</c>), so the pending set
/// never holds more than one entry per region slot: it is bounded by the device's max regions and
/// no update is ever dropped for lack of room. Pending regions are written into eventq buffers at
/// once (in the loop turn that routed the update, or after <see cref="VqEventOptions.BatchDelay"/>), oldest first, as
/// many offsets per buffer as fit; when the driver has posted no buffer they wait, and the
/// driver's next kick (<see cref="OnQueueNotified"/>) delivers them. An offset leaves the pending
/// set exactly when it is written into a buffer, so one update is delivered once, and a detach
/// (<see cref="OnRegionDetached"/>) or a reset removes it, so nothing is delivered for a region the
/// device no longer references. Interrupt suppression (VRING_AVAIL_F_NO_INTERRUPT, or used_event
/// with VIRTIO_F_EVENT_IDX) is applied by the queue engine when a buffer is completed.
/// All members run on the device's loop.
/// </remarks>
public sealed class VqEventChannel : IEventChannel
{
    private readonly DeviceDescription _device;
    private readonly ILogger _log;
    private readonly ulong[] _offsetOf;
    private readonly SlotQueue _pending;
    private readonly DeferredFlush _flush;
    private byte[] _record = new byte[8 + 8 * 64];
    private IEventContext? _context;
    private bool _waitingForBuffers;
    private bool _disposed;

    /// <summary>Creates the channel for one device (the host does, through DI).</summary>
    /// <param name="options">The <c>[device.events]</c> options.</param>
    /// <param name="device">The device's layout (region size, max regions).</param>
    /// <param name="loop">The device's loop.</param>
    /// <param name="log">Where refusals and driver errors are logged.</param>
    public VqEventChannel(VqEventOptions options, DeviceDescription device, IDeviceLoop loop, ILogger<VqEventChannel> log)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(loop);
        ArgumentNullException.ThrowIfNull(log);
        _device = device;
        _log = log;
        _offsetOf = new ulong[device.MaxRegions];
        _pending = new SlotQueue(device.MaxRegions);
        _flush = new DeferredFlush(loop, options.BatchDelay, Flush);
    }

    /// <inheritdoc />
    public ulong Features => Vism.Abstractions.Features.Mask(Vism.Abstractions.Features.IsmEventVq);

    /// <inheritdoc />
    public int QueueCount => 1;

    /// <summary>Regions with an update not yet written into an eventq buffer (loop thread).</summary>
    public int Pending => _pending.Count;

    /// <summary>Whether the driver's features activated the channel (loop thread).</summary>
    public bool IsActive => _context is not null;

    /// <inheritdoc />
    public void Activate(IEventContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        ObjectDisposedException.ThrowIf(_disposed, this);
        Drop("events.vq.dropped-reset");
        _context = context;
    }

    /// <inheritdoc />
    public void Deactivate()
    {
        Drop("events.vq.dropped-reset");
        _context = null;
    }

    /// <inheritdoc />
    public void OnRegionUpdated(RegionSlot region)
    {
        if (_context is not { } context)
            return;
        _offsetOf[region.Index] = region.Offset;
        if (!_pending.Add(region.Index))
        {
            context.Counters.Increment("events.folded");
            return;
        }
        context.Counters.Increment("events.vq.queued");
        _flush.Request();
    }

    /// <inheritdoc />
    public void OnRegionDetached(RegionSlot region)
    {
        if (_context is not { } context)
            return;
        if (_pending.Remove(region.Index))
            context.Counters.Increment("events.vq.dropped-detached");
    }

    /// <inheritdoc />
    public bool TryBindVector(RegionSlot region, ulong vector, out Refusal refusal)
    {
        refusal = new Refusal(IEventChannel.EventVectorRejected,
            "the vq event channel delivers events on the eventq and binds no vectors (use events kind \"irq\" for VIRTIO_ISM_F_EVENT_IRQ)");
        return false;
    }

    /// <inheritdoc />
    public void OnQueueNotified(int queueIndex)
    {
        if (queueIndex != Virtio.EventQueue || _context is null)
            return;
        // Updates that waited for a buffer go out now. Otherwise a kick changes nothing: pending
        // updates keep waiting for their scheduled flush (the batch delay is not cut short).
        if (_waitingForBuffers && _pending.Count > 0)
        {
            _flush.Cancel();
            Flush();
        }
    }

    /// <summary>Writes pending offsets into as many posted buffers as they need.</summary>
    private void Flush()
    {
        IEventContext? context = _context;
        if (context is null || _pending.Count == 0)
            return;
        IVirtqueue? queue = context.GetQueue(Virtio.EventQueue);
        _waitingForBuffers = true;
        if (queue is null || !queue.IsReady)
        {
            context.Counters.Increment("events.vq.no-queue");
            return;
        }
        while (_pending.Count > 0)
        {
            if (!queue.TryPop(out DescriptorChain? chain))
            {
                // No buffer posted (or the ring is broken, and the device is being reset): the
                // offsets stay pending until the driver kicks the eventq.
                context.Counters.Increment("events.vq.no-buffer");
                return;
            }
            if (!Fill(context, queue, chain))
                return;
        }
        _waitingForBuffers = false;
    }

    /// <summary>Fills one buffer with the oldest pending offsets and returns it to the driver.</summary>
    /// <returns>False when guest memory failed and the flush should stop.</returns>
    private bool Fill(IEventContext context, IVirtqueue queue, DescriptorChain chain)
    {
        uint room = chain.WritableLength;
        if (room < 16)
        {
            RateLimitedLog.Count(context.Counters, _log, LogLevel.Warning, "err.events.vq.buffer-too-small",
                "device {Name}: eventq buffer {Head} has {Room} device-writable bytes; a virtio_ism_event with one offset needs 16. Returned empty",
                _device.Name, chain.Head, room);
            queue.Complete(chain, 0);
            return true;
        }
        int count = (int)Math.Min((room - 8) / 8, (uint)_pending.Count);
        int length = 8 + 8 * count;
        if (_record.Length < length)
            _record = new byte[Math.Max(length, 2 * _record.Length)];
        Span<byte> record = _record.AsSpan(0, length);
        BinaryPrimitives.WriteUInt64LittleEndian(record, (ulong)count);
        int slot = _pending.First;
        for (int i = 0; i < count; i++, slot = _pending.Next(slot))
            BinaryPrimitives.WriteUInt64LittleEndian(record[(8 + 8 * i)..], _offsetOf[slot]);

        int written = chain.Write(context.Memory, 0, record);
        if (written != length)
        {
            // The chain was checked against guest memory when it was popped; the map changed since.
            RateLimitedLog.Count(context.Counters, _log, LogLevel.Error, "err.events.vq.buffer-unmapped",
                "device {Name}: eventq buffer {Head} is no longer in guest memory; its {Count} offsets stay pending",
                _device.Name, chain.Head, count);
            queue.Complete(chain, 0);
            return false;
        }
        for (int i = 0; i < count; i++)
            _pending.Remove(_pending.First);
        queue.Complete(chain, (uint)written);
        context.Counters.Increment("events.vq.buffers");
        context.Counters.Increment("events.vq.offsets", count);
        return true;
    }

    private void Drop(string counter)
    {
        _flush.Cancel();
        _waitingForBuffers = false;
        int dropped = _pending.Count;
        _pending.Clear();
        if (dropped > 0)
            _context?.Counters.Increment(counter, dropped);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _flush.Cancel();
        _pending.Clear();
        _context = null;
    }
}
