using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Native;
using Vism.Mmio;

namespace Vism.Transport.Mmio;

/// <summary>
/// Guest RAM the VMM described with SET_MEM_TABLE: each region's descriptor mapped (MAP_SHARED)
/// into this process. Built only from a validated table; immutable afterwards; disposed when the
/// next table replaces it or the VMM leaves.
/// </summary>
internal sealed class MmioGuestMemory : IGuestMemory, IDisposable
{
    private readonly Region[] _regions;

    private MmioGuestMemory(Region[] regions) => _regions = regions;

    /// <summary>No RAM: every translation fails (before the first SET_MEM_TABLE).</summary>
    public static MmioGuestMemory Empty { get; } = new([]);

    /// <summary>Number of regions.</summary>
    public int RegionCount => _regions.Length;

    /// <summary>Validates <paramref name="table"/> against its descriptors and maps it.</summary>
    /// <param name="table">The regions, in message order.</param>
    /// <param name="fds">One descriptor per region, same order; the caller still owns them (they may be closed after this returns).</param>
    /// <param name="memory">The mapped memory on success.</param>
    /// <returns>Null on success, otherwise why the table is refused.</returns>
    public static string? TryCreate(IReadOnlyList<MemoryRegion> table, IReadOnlyList<SafeFileHandle> fds, out MmioGuestMemory? memory)
    {
        memory = null;
        if (table.Count != fds.Count)
            return $"{table.Count} regions but {fds.Count} descriptors";
        const ulong page = MmioProtocol.PageSize;
        var order = new int[table.Count];
        for (int i = 0; i < table.Count; i++)
        {
            order[i] = i;
            MemoryRegion r = table[i];
            if (r.Size == 0 || r.Size % page != 0 || r.GuestPhysical % page != 0 || r.FdOffset % page != 0)
                return $"region {i}: address 0x{r.GuestPhysical:x}, size 0x{r.Size:x} and fd offset 0x{r.FdOffset:x} must be page aligned and the size positive";
            if (r.Size > ulong.MaxValue - r.GuestPhysical) // the end address must be representable
                return $"region {i}: [0x{r.GuestPhysical:x}, +0x{r.Size:x}) wraps past 2^64";
            if (r.Size > (ulong)nint.MaxValue || r.FdOffset > long.MaxValue || r.Size > (ulong)long.MaxValue - r.FdOffset)
                return $"region {i}: size 0x{r.Size:x} at fd offset 0x{r.FdOffset:x} cannot be mapped";
            long fileSize;
            try
            {
                fileSize = Fd.Size(fds[i]);
            }
            catch (PosixException ex)
            {
                return $"region {i}: {ex.Message}";
            }
            if (fileSize < 0 || r.FdOffset + r.Size > (ulong)fileSize)
                return $"region {i}: [0x{r.FdOffset:x}, +0x{r.Size:x}) runs past the end of its {fileSize}-byte file";
        }
        Array.Sort(order, (a, b) => table[a].GuestPhysical.CompareTo(table[b].GuestPhysical));
        for (int k = 1; k < order.Length; k++)
        {
            MemoryRegion prev = table[order[k - 1]], next = table[order[k]];
            if (next.GuestPhysical - prev.GuestPhysical < prev.Size)
                return $"regions {order[k - 1]} and {order[k]} overlap at 0x{next.GuestPhysical:x}";
        }
        var regions = new Region[table.Count];
        try
        {
            for (int k = 0; k < order.Length; k++)
            {
                MemoryRegion r = table[order[k]];
                string? risk = GuestRamSeals.Check(fds[order[k]]);
                regions[k] = new Region(r.GuestPhysical, r.Size, Mapping.Map(fds[order[k]], r.FdOffset, r.Size), risk);
            }
        }
        catch (Exception ex) when (ex is PosixException or ArgumentException)
        {
            foreach (Region? r in regions) r?.Map.Dispose();
            return $"mapping guest RAM failed: {ex.Message}";
        }
        memory = new MmioGuestMemory(regions);
        return null;
    }

    /// <inheritdoc />
    public bool TryTranslate(ulong address, ulong length, out nint host) => TryTranslate(address, length, out host, out _);

    /// <inheritdoc />
    public bool TryTranslate(ulong address, ulong length, out nint host, out bool mayFault)
    {
        foreach (Region r in _regions)
        {
            if (address < r.GuestPhysical) break; // sorted by address
            ulong off = address - r.GuestPhysical;
            if (off >= r.Size) continue;
            if (length > r.Size - off) break;
            host = r.Map.Address + (nint)off;
            mayFault = r.ShrinkRisk is not null;
            return true;
        }
        host = 0;
        mayFault = false;
        return false;
    }

    /// <summary>Why each region the VMM could shrink under the device can be (null entries: sealed).</summary>
    public IEnumerable<string?> ShrinkRisks => _regions.Select(r => r.ShrinkRisk);

    public void Dispose()
    {
        foreach (Region r in _regions) r.Map.Dispose();
    }

    private sealed record Region(ulong GuestPhysical, ulong Size, Mapping Map, string? ShrinkRisk);
}
