using Vism.Abstractions;

namespace Vism.Core;

/// <summary>
/// Lays out a device's shared-memory window: REGIONS (shmid 1) and NOTIFY (shmid 2) back to back,
/// their total a power of two (QEMU puts both in one PCI BAR, whose size must be a power of two).
/// </summary>
public static class DeviceLayout
{
    /// <summary>The page size every window offset and length is a multiple of.</summary>
    public const ulong PageSize = TransportRules.PageSize;

    /// <summary>Every window starts and ends on a multiple of this (2 MiB): a Linux driver that maps
    /// REGIONS or NOTIFY as kernel pages (<c>devm_memremap_pages</c>, as SMC-D does) needs 2 MiB
    /// aligned starts and sizes on x86-64 ("Misaligned __add_pages" otherwise).</summary>
    public const ulong WindowAlignment = 2UL << 20;

    /// <summary>
    /// Computes the layout. REGIONS comes first and NOTIFY right after it (one BAR of
    /// <paramref name="windowSize"/> bytes, a power of two); each window's length is a multiple of
    /// <see cref="WindowAlignment"/> (and REGIONS of <paramref name="regionSize"/>), so both start
    /// and end on a 2 MiB boundary. NOTIFY gets the fewest such units that hold one
    /// <paramref name="notifySize"/> slot per region of the rest. With 64 MiB, 1 MiB regions and
    /// 1-byte slots that is 62 regions and a 2 MiB NOTIFY window; with 1 GiB, 1023 - 1 = 1022.
    /// </summary>
    /// <param name="name">The device name.</param>
    /// <param name="virtioId">The virtio device ID.</param>
    /// <param name="windowSize">REGIONS + NOTIFY in bytes: a power of two, at least twice the larger of
    /// <paramref name="regionSize"/> and <see cref="WindowAlignment"/>.</param>
    /// <param name="regionSize"><c>region_size</c>: a power of two, at least 4 KiB.</param>
    /// <param name="notifySize"><c>notify_size</c>: 1 to <paramref name="regionSize"/> bytes.</param>
    /// <returns>The device description.</returns>
    /// <exception cref="ArgumentException">When a size breaks one of the rules above.</exception>
    public static DeviceDescription Compute(string name, uint virtioId, ulong windowSize, ulong regionSize, ulong notifySize)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (!ulong.IsPow2(regionSize) || regionSize < PageSize)
            throw new ArgumentException($"region size {regionSize} must be a power of two of at least {PageSize} bytes", nameof(regionSize));
        ulong unit = Math.Max(regionSize, WindowAlignment); // both powers of two: a multiple of each
        if (!ulong.IsPow2(windowSize) || windowSize < 2 * unit)
            throw new ArgumentException($"window size {windowSize} must be a power of two of at least {2 * unit} bytes " +
                $"(a REGIONS and a NOTIFY window of at least {unit} bytes each, both 2 MiB aligned)", nameof(windowSize));
        if (notifySize == 0 || notifySize > regionSize)
            throw new ArgumentException($"notify size {notifySize} must be between 1 and the region size {regionSize}", nameof(notifySize));

        ulong units = windowSize / unit;
        // Give up k units to the NOTIFY window until the notify slots of the regions in the rest fit in it.
        for (ulong k = 1; k < units; k++)
        {
            ulong regionsWindow = (units - k) * unit;
            ulong regions = regionsWindow / regionSize;
            ulong notifyBytes = regions * notifySize; // regions * notifySize <= windowSize: no overflow
            ulong notifyWindow = k * unit;
            if (RoundUp(notifyBytes, PageSize) <= notifyWindow)
            {
                if (regions > int.MaxValue)
                    throw new ArgumentException($"{regions} regions are too many; use larger regions", nameof(regionSize));
                return new DeviceDescription
                {
                    Name = name,
                    VirtioId = virtioId,
                    RegionSize = regionSize,
                    NotifySize = notifySize,
                    MaxRegions = (int)regions,
                    RegionsWindowSize = regionsWindow,
                    NotifyWindowSize = notifyWindow,
                };
            }
        }
        throw new ArgumentException($"a {windowSize}-byte window holds no {regionSize}-byte region with its {notifySize}-byte notify slot", nameof(windowSize));
    }

    internal static ulong RoundUp(ulong value, ulong align) =>
        value % align == 0 ? value : value + (align - value % align);
}
