using Vism.Abstractions;

namespace Vism.Events.Shared;

/// <summary>Region offsets in a device's REGIONS window and the slots they name.</summary>
internal static class RegionSlots
{
    /// <summary>The slot of the region at <paramref name="offset"/>: the offset must be a multiple of
    /// <c>region_size</c> and name one of the device's <see cref="DeviceDescription.MaxRegions"/> slots.</summary>
    /// <param name="device">The device's layout.</param>
    /// <param name="offset">A region offset as the device reported it to its driver.</param>
    /// <param name="slot">The slot, when the offset is valid.</param>
    /// <returns>Whether <paramref name="offset"/> names a slot.</returns>
    public static bool TryGetSlot(DeviceDescription device, ulong offset, out int slot)
    {
        slot = -1;
        ulong size = device.RegionSize;
        if (size == 0 || offset % size != 0 || offset / size >= (ulong)device.MaxRegions)
            return false;
        slot = (int)(offset / size);
        return true;
    }

    /// <summary>The offset of <paramref name="slot"/>'s region.</summary>
    /// <param name="device">The device's layout.</param>
    /// <param name="slot">A slot below <see cref="DeviceDescription.MaxRegions"/>.</param>
    /// <returns>Its offset in the REGIONS window.</returns>
    public static ulong OffsetOf(DeviceDescription device, int slot) => (ulong)slot * device.RegionSize;
}
