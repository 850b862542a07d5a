using Microsoft.Extensions.Logging;
using Vism.Abstractions;

namespace Vism.MyPlugin;

/// <summary>
/// Per-region interrupts (VIRTIO_ISM_F_EVENT_IRQ): the driver binds a region to a vector with
/// EVENT_VECTOR, and every update of that region by a peer fires the vector. One instance per
/// device, created by the host through dependency injection.
/// </summary>
/// <remarks>Threading: every member is called on the device's loop, so no locking is needed; never
/// block in one.</remarks>
/// <param name="options">This device's options (bound and validated).</param>
/// <param name="log">Logger.</param>
public sealed class MyEventChannel(MyOptions options, ILogger<MyEventChannel> log) : IEventChannel
{
    // Keyed by region slot (RegionSlot.Index: 0 .. max regions - 1).
    private readonly Dictionary<int, int> _vectorOf = [];
    private readonly HashSet<int> _held = [];
    private IEventContext? _context;

    /// <inheritdoc />
    public ulong Features => Vism.Abstractions.Features.Mask(Vism.Abstractions.Features.IsmEventIrq);

    /// <inheritdoc />
    public void Activate(IEventContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        Deactivate();
        _context = context;
    }

    /// <inheritdoc />
    public void Deactivate()
    {
        _vectorOf.Clear();
        _held.Clear();
        _context = null;
    }

    /// <inheritdoc />
    public void OnRegionUpdated(RegionSlot region)
    {
        if (_context is not { } context) return;
        if (_vectorOf.TryGetValue(region.Index, out int vector))
            context.SignalVector(vector);
        else if (options.HoldUnbound)
            _held.Add(region.Index);
    }

    /// <inheritdoc />
    public void OnRegionDetached(RegionSlot region)
    {
        _vectorOf.Remove(region.Index);
        _held.Remove(region.Index);
    }

    /// <inheritdoc />
    public bool TryBindVector(RegionSlot region, ulong vector, out Refusal refusal)
    {
        // A refusal is a counter (the device counts it as err.<counter>) and a sentence for the log.
        if (_context is not { } context)
        {
            refusal = new Refusal(IEventChannel.EventVectorRejected, $"{MyPlugin.Kind} is not active (VIRTIO_ISM_F_EVENT_IRQ not negotiated)");
            return false;
        }
        if (vector >= (ulong)context.VectorCount)
        {
            refusal = new Refusal(IEventChannel.EventVectorRejected, $"vector {vector} is not below the {context.VectorCount} per-region vectors the transport offers");
            return false;
        }
        refusal = default;
        _vectorOf[region.Index] = (int)vector;
        log.LogDebug("{Kind}: region at 0x{Offset:x} bound to vector {Vector}", MyPlugin.Kind, region.Offset, vector);
        if (_held.Remove(region.Index))
            context.SignalVector((int)vector);
        return true;
    }

    /// <summary>Nothing to free.</summary>
    public void Dispose()
    {
    }
}
