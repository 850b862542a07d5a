namespace Vism.Abstractions;

/// <summary>A mapping a transport already holds in a shared-memory window.</summary>
/// <param name="Offset">Offset of the mapping in the window.</param>
/// <param name="Length">Its length in bytes.</param>
public readonly record struct MappedRange(ulong Offset, ulong Length);

/// <summary>
/// The rules every transport applies to what a device asks of it, in one place: the arguments of
/// <see cref="ITransportServices.MapAsync"/> and the layout of a split virtqueue. Transports call
/// these before they touch their wire protocol, so a bad request is refused the same way whichever
/// transport serves the device.
/// </summary>
public static class TransportRules
{
    /// <summary>The page size of shared-memory windows and window mappings (4 KiB, as virtio and QEMU use).</summary>
    public const ulong PageSize = 4096;

    /// <summary>Checks a window mapping: the window exists, offset and length are page multiples
    /// and the length positive, the range lies in the window, the block holds the length at a page
    /// aligned offset, and the range overlaps no mapping already made in that window.</summary>
    /// <param name="shmId">The window.</param>
    /// <param name="windowLength">The window's length, or null when the device has no such window.</param>
    /// <param name="offset">Offset of the mapping in the window.</param>
    /// <param name="length">Bytes to map.</param>
    /// <param name="block">The backing.</param>
    /// <param name="mapped">The mappings already in this window.</param>
    /// <returns>Null when the mapping may be made, otherwise why not.</returns>
    public static string? CheckMap(ShmId shmId, ulong? windowLength, ulong offset, ulong length, IMemoryBlock block, IEnumerable<MappedRange> mapped)
    {
        ArgumentNullException.ThrowIfNull(block);
        ArgumentNullException.ThrowIfNull(mapped);
        if (windowLength is not { } window) return $"the device has no shared memory window {shmId}";
        if (length == 0 || offset % PageSize != 0 || length % PageSize != 0)
            return $"[0x{offset:x}, +0x{length:x}) is empty or not page aligned";
        if (offset > window || length > window - offset)
            return $"[0x{offset:x}, +0x{length:x}) is outside the 0x{window:x}-byte {shmId} window";
        if (length > block.Length)
            return $"{length} bytes exceed the {block.Length}-byte block";
        if (block.Offset % PageSize != 0)
            return $"block offset 0x{block.Offset:x} is not page aligned";
        foreach (MappedRange m in mapped)
            if (offset < m.Offset + m.Length && m.Offset < offset + length)
                return $"[0x{offset:x}, +0x{length:x}) overlaps the mapping at 0x{m.Offset:x}";
        return null;
    }

    /// <summary>Checks where a split virtqueue of <paramref name="size"/> entries lies: descriptor
    /// table 16-byte, available ring 2-byte and used ring 4-byte aligned, each wholly in guest
    /// memory. The size itself is the caller's to check (its limit depends on the device).</summary>
    /// <param name="descriptors">Guest-physical address of the descriptor table.</param>
    /// <param name="available">Guest-physical address of the available ring.</param>
    /// <param name="used">Guest-physical address of the used ring.</param>
    /// <param name="size">Number of entries.</param>
    /// <param name="memory">Guest memory.</param>
    /// <returns>Null when the layout is valid, otherwise why not.</returns>
    public static string? CheckRingLayout(ulong descriptors, ulong available, ulong used, ushort size, IGuestMemory memory)
    {
        ArgumentNullException.ThrowIfNull(memory);
        if (descriptors % 16 != 0) return $"descriptor table 0x{descriptors:x} is not 16-byte aligned";
        if (available % 2 != 0) return $"available ring 0x{available:x} is not 2-byte aligned";
        if (used % 4 != 0) return $"used ring 0x{used:x} is not 4-byte aligned";
        ulong n = size;
        if (!memory.TryTranslate(descriptors, 16 * n, out _)) return $"descriptor table [0x{descriptors:x}, +{16 * n}) is not in guest memory";
        if (!memory.TryTranslate(available, 6 + 2 * n, out _)) return $"available ring [0x{available:x}, +{6 + 2 * n}) is not in guest memory";
        if (!memory.TryTranslate(used, 6 + 8 * n, out _)) return $"used ring [0x{used:x}, +{6 + 8 * n}) is not in guest memory";
        return null;
    }
}
