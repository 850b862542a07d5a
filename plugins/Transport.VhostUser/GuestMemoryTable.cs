using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Native;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser;

/// <summary>One mapped region of the frontend's memory table.</summary>
internal sealed class GuestRegion : IDisposable
{
    private readonly Mapping _mapping;

    private GuestRegion(MemoryRegionDescriptor descriptor, Mapping mapping, ulong mappingStart, string? shrinkRisk)
    {
        Descriptor = descriptor;
        _mapping = mapping;
        Host = mapping.Address + (nint)(descriptor.MmapOffset - mappingStart);
        ShrinkRisk = shrinkRisk;
    }

    /// <summary>Null when the frontend cannot shrink this memory under the device (a memfd sealed
    /// with F_SEAL_SHRINK, by QEMU or by vism at SET_MEM_TABLE); otherwise why it can, and every
    /// access goes through a fault-safe copy (<see cref="IGuestMemory.TryTranslate(ulong, ulong, out nint, out bool)"/>).</summary>
    public string? ShrinkRisk { get; }

    public MemoryRegionDescriptor Descriptor { get; }

    public ulong GuestAddress => Descriptor.GuestAddress;

    public ulong Size => Descriptor.Size;

    public ulong UserAddress => Descriptor.UserAddress;

    /// <summary>Host address of the region's first byte.</summary>
    public nint Host { get; }

    /// <summary>Validates <paramref name="d"/> against its fd and maps it read-write.</summary>
    /// <returns>The region, or null with the reason.</returns>
    public static GuestRegion? TryMap(MemoryRegionDescriptor d, SafeFileHandle fd, out string? error)
    {
        error = Check(d);
        if (error is not null) return null;
        if (Syscall.fstat(Fd.Raw(fd), out Stat st) != 0)
        {
            error = $"fstat of the region's fd failed: {Stdlib.GetLastError()}";
            return null;
        }
        if ((st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
        {
            error = $"the region's fd is not a regular file, memfd or hugetlbfs file (mode 0{Convert.ToString((uint)st.st_mode, 8)})";
            return null;
        }
        ulong end = d.MmapOffset + d.Size; // Check() ruled out overflow
        if (st.st_size < 0 || (ulong)st.st_size < end)
        {
            error = $"region [{d.MmapOffset}, +{d.Size}) ends past its file ({st.st_size} bytes); touching it would raise SIGBUS";
            return null;
        }
        // mmap offsets must be aligned to the file's page size (2 MiB or 1 GiB on hugetlbfs, whose
        // st_blksize is the huge page size).
        ulong page = (ulong)Environment.SystemPageSize;
        ulong align = (ulong)st.st_blksize > page && ulong.IsPow2((ulong)st.st_blksize) ? (ulong)st.st_blksize : page;
        ulong start = d.MmapOffset & ~(align - 1);
        string? shrinkRisk = GuestRamSeals.Check(fd);
        try
        {
            Mapping m = Mapping.Map(fd, start, end - start, writable: true);
            return new GuestRegion(d, m, start, shrinkRisk);
        }
        catch (Exception ex) when (ex is PosixException or ArgumentOutOfRangeException)
        {
            error = $"mapping region [gpa 0x{d.GuestAddress:x}, +0x{d.Size:x}) failed: {ex.Message}";
            return null;
        }
    }

    /// <summary>Range checks that need no fd.</summary>
    public static string? Check(MemoryRegionDescriptor d)
    {
        if (d.Size == 0) return "a memory region of size 0";
        if (d.GuestAddress > ulong.MaxValue - d.Size) return $"region [gpa 0x{d.GuestAddress:x}, +0x{d.Size:x}) wraps around 2^64";
        if (d.UserAddress > ulong.MaxValue - d.Size) return $"region [user 0x{d.UserAddress:x}, +0x{d.Size:x}) wraps around 2^64";
        if (d.MmapOffset > long.MaxValue || d.Size > (ulong)long.MaxValue - d.MmapOffset)
            return $"region [offset 0x{d.MmapOffset:x}, +0x{d.Size:x}) is beyond any file";
        return null;
    }

    public bool OverlapsGuest(ulong gpa, ulong size) => gpa < GuestAddress + Size && GuestAddress < gpa + size;

    public bool OverlapsUser(ulong user, ulong size) => user < UserAddress + Size && UserAddress < user + size;

    public void Dispose() => _mapping.Dispose();
}

/// <summary>
/// The frontend's memory table as the device sees it: guest-physical ranges mapped into this
/// process, looked up with every range checked before a pointer is formed. Regions never overlap
/// (neither in guest-physical nor in frontend user addresses). Loop thread only.
/// </summary>
internal sealed class GuestMemoryTable : IGuestMemory, IDisposable
{
    private readonly List<GuestRegion> _regions = []; // sorted by guest address
    private GuestRegion? _last;

    public GuestMemoryTable(int maxSlots) => MaxSlots = maxSlots;

    public int MaxSlots { get; }

    public int Count => _regions.Count;

    public IReadOnlyList<GuestRegion> Regions => _regions;

    /// <inheritdoc />
    public bool TryTranslate(ulong address, ulong length, out nint host) => TryTranslate(address, length, out host, out _);

    /// <inheritdoc />
    public bool TryTranslate(ulong address, ulong length, out nint host, out bool mayFault)
    {
        host = 0;
        mayFault = false;
        GuestRegion? r = _last is not null && Contains(_last, address) ? _last : Find(address);
        if (r is null) return false;
        ulong offset = address - r.GuestAddress;
        if (length > r.Size - offset) return false;
        _last = r;
        host = r.Host + (nint)offset;
        mayFault = r.ShrinkRisk is not null;
        return true;
    }

    /// <summary>Translates a frontend user address (SET_VRING_ADDR) to guest-physical.</summary>
    public bool TryUserToGuest(ulong user, out ulong gpa)
    {
        foreach (GuestRegion r in _regions)
        {
            if (user >= r.UserAddress && user - r.UserAddress < r.Size)
            {
                gpa = r.GuestAddress + (user - r.UserAddress);
                return true;
            }
        }
        gpa = 0;
        return false;
    }

    /// <summary>Adds a region (ADD_MEM_REG). On failure the region is not taken.</summary>
    public string? TryAdd(GuestRegion region)
    {
        if (_regions.Count >= MaxSlots) return $"all {MaxSlots} memory slots are in use";
        string? overlap = FindOverlap(_regions, region);
        if (overlap is not null) return overlap;
        Insert(_regions, region);
        return null;
    }

    /// <summary>Removes and unmaps the region with this guest address and size (REM_MEM_REG).</summary>
    public string? TryRemove(ulong gpa, ulong size)
    {
        int i = _regions.FindIndex(r => r.GuestAddress == gpa && r.Size == size);
        if (i < 0) return $"no memory region [gpa 0x{gpa:x}, +0x{size:x}) to remove";
        _regions[i].Dispose();
        _regions.RemoveAt(i);
        _last = null;
        return null;
    }

    /// <summary>Replaces the whole table (SET_MEM_TABLE). On failure nothing changes and the new
    /// regions are disposed; on success the old ones are unmapped.</summary>
    public string? TryReplace(IReadOnlyList<GuestRegion> regions)
    {
        string? error = regions.Count > MaxSlots ? $"{regions.Count} regions exceed {MaxSlots} memory slots" : null;
        var sorted = new List<GuestRegion>(regions.Count);
        foreach (GuestRegion r in regions)
        {
            error ??= FindOverlap(sorted, r);
            Insert(sorted, r);
        }
        if (error is not null)
        {
            foreach (GuestRegion r in regions) r.Dispose();
            return error;
        }
        Clear();
        _regions.AddRange(sorted);
        return null;
    }

    /// <summary>Unmaps every region.</summary>
    public void Clear()
    {
        foreach (GuestRegion r in _regions) r.Dispose();
        _regions.Clear();
        _last = null;
    }

    public void Dispose() => Clear();

    private static bool Contains(GuestRegion r, ulong address) => address >= r.GuestAddress && address - r.GuestAddress < r.Size;

    private GuestRegion? Find(ulong address)
    {
        int lo = 0, hi = _regions.Count - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            GuestRegion r = _regions[mid];
            if (address < r.GuestAddress) hi = mid - 1;
            else if (address - r.GuestAddress >= r.Size) lo = mid + 1;
            else return r;
        }
        return null;
    }

    private static string? FindOverlap(List<GuestRegion> existing, GuestRegion region)
    {
        foreach (GuestRegion r in existing)
        {
            if (r.OverlapsGuest(region.GuestAddress, region.Size))
                return $"region [gpa 0x{region.GuestAddress:x}, +0x{region.Size:x}) overlaps [gpa 0x{r.GuestAddress:x}, +0x{r.Size:x})";
            if (r.OverlapsUser(region.UserAddress, region.Size))
                return $"region [user 0x{region.UserAddress:x}, +0x{region.Size:x}) overlaps [user 0x{r.UserAddress:x}, +0x{r.Size:x})";
        }
        return null;
    }

    private static void Insert(List<GuestRegion> list, GuestRegion region)
    {
        int i = 0;
        while (i < list.Count && list[i].GuestAddress < region.GuestAddress) i++;
        list.Insert(i, region);
    }
}
