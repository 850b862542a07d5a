using System.Diagnostics.CodeAnalysis;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;

namespace Vism.Events.Shared;

/// <summary>Region offsets in one device's REGIONS window and the slots they name.</summary>
/// <param name="device">The device's layout.</param>
/// <param name="log">Where an offset that names no slot is reported.</param>
internal sealed class RegionSlots(DeviceDescription device, ILogger log)
{
    /// <summary>Number of slots (the device's max regions).</summary>
    public int Count => device.MaxRegions;

    /// <summary>The slot of the region at <paramref name="offset"/>: the offset must be a multiple of
    /// <c>region_size</c> and name one of the device's slots.</summary>
    /// <param name="offset">A region offset as the device reported it to its driver.</param>
    /// <param name="slot">The slot, when the offset is valid.</param>
    /// <returns>Whether <paramref name="offset"/> names a slot.</returns>
    public bool TryGetSlot(ulong offset, out int slot)
    {
        slot = -1;
        ulong size = device.RegionSize;
        if (size == 0 || offset % size != 0 || offset / size >= (ulong)device.MaxRegions)
            return false;
        slot = (int)(offset / size);
        return true;
    }

    /// <summary>The offset of <paramref name="slot"/>'s region.</summary>
    /// <param name="slot">A slot below <see cref="Count"/>.</param>
    /// <returns>Its offset in the REGIONS window.</returns>
    public ulong OffsetOf(int slot) => (ulong)slot * device.RegionSize;

    /// <summary>For a call from the device: false when the channel is inactive
    /// (<paramref name="context"/> is null), or when <paramref name="offset"/> names no slot, which
    /// is logged and counted (<c>err.events.bad-offset</c>).</summary>
    /// <param name="context">The channel's context, null while inactive.</param>
    /// <param name="offset">The offset the device passed.</param>
    /// <param name="what">The call, for the log.</param>
    /// <param name="slot">The slot, when it returns true.</param>
    /// <returns>Whether the call should be acted on.</returns>
    public bool TryResolve([NotNullWhen(true)] IEventContext? context, ulong offset, string what, out int slot)
    {
        slot = -1;
        if (context is null)
            return false;
        if (TryGetSlot(offset, out slot))
            return true;
        context.Counters.Increment("err.events.bad-offset");
        log.LogError("device {Name}: {What} for offset 0x{Offset:x}, which names no region slot (region_size {RegionSize}, {MaxRegions} slots)",
            device.Name, what, offset, device.RegionSize, device.MaxRegions);
        return false;
    }
}
