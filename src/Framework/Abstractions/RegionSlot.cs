namespace Vism.Abstractions;

/// <summary>
/// A region as one device references it: its slot (0 .. max regions - 1) and the offset of that
/// slot in the device's REGIONS window (<c>slot * region_size</c>, what the driver was told). The
/// device computes both once; an event channel indexes its per-region state by
/// <see cref="Index"/> and reports <see cref="Offset"/> to the driver.
/// </summary>
/// <param name="Index">The slot, below <see cref="DeviceDescription.MaxRegions"/>.</param>
/// <param name="Offset">The slot's offset in the REGIONS window.</param>
public readonly record struct RegionSlot(int Index, ulong Offset)
{
    /// <summary>The slot <paramref name="index"/> of a device whose regions are <paramref name="regionSize"/> bytes apart.</summary>
    /// <param name="index">The slot.</param>
    /// <param name="regionSize">The device's <c>region_size</c>.</param>
    /// <returns>The slot with its offset.</returns>
    public static RegionSlot Of(int index, ulong regionSize) => new(index, (ulong)index * regionSize);
}
