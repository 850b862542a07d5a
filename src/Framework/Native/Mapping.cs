using System.Runtime.InteropServices;

namespace Vism.Native;

/// <summary>An mmap'd range, unmapped exactly once on dispose.</summary>
public sealed unsafe class Mapping : IDisposable
{
    private nint _address;

    private Mapping(nint address, ulong length)
    {
        _address = address;
        Length = length;
    }

    /// <summary>Start address (0 after dispose).</summary>
    public nint Address => _address;

    /// <summary>Length in bytes.</summary>
    public ulong Length { get; }

    /// <summary>Maps <paramref name="length"/> bytes of <paramref name="fd"/> at <paramref name="offset"/>, MAP_SHARED.</summary>
    public static Mapping Map(SafeHandle fd, ulong offset, ulong length, bool writable = true, bool populate = false) =>
        new(MemFd.Posix(() => PluginKit.SharedMapping.MapShared(fd, offset, length, writable, populate)), length);

    /// <summary>Reserves <paramref name="length"/> bytes of address space with no access (PROT_NONE),
    /// to place fixed mappings into later (a driver-side shared-memory window). The start is
    /// naturally aligned up to 1 GiB (to the largest power of two not above the length), so that
    /// huge-page blocks (2 MiB, 1 GiB) mapped at offsets that are multiples of their page size
    /// land on addresses aligned to it, as hugetlb requires.</summary>
    public static Mapping Reserve(ulong length)
    {
        if (length == 0 || length > (ulong)nint.MaxValue / 2) throw new ArgumentOutOfRangeException(nameof(length));
        ulong align = Math.Min(1UL << 30, 1UL << (63 - System.Numerics.BitOperations.LeadingZeroCount(length)));
        align = Math.Max(align, (ulong)Environment.SystemPageSize);
        ulong span = length + align;
        nint p = LibC.mmap(0, (nuint)span, LibC.PROT_NONE, LibC.MAP_PRIVATE | LibC.MAP_ANONYMOUS | LibC.MAP_NORESERVE, -1, 0);
        if (p == -1) throw PosixException.FromPInvoke($"mmap(reserve {length})");
        nint start = (nint)(((ulong)p + align - 1) & ~(align - 1));
        ulong head = (ulong)(start - p);
        ulong tail = span - head - length;
        if (head != 0) LibC.munmap(p, (nuint)head);
        if (tail != 0) LibC.munmap(start + (nint)length, (nuint)tail);
        return new Mapping(start, length);
    }

    /// <summary>Maps <paramref name="fd"/> over [windowOffset, windowOffset+length) of this reservation (MAP_FIXED).</summary>
    public void MapFixed(ulong windowOffset, SafeHandle fd, ulong fdOffset, ulong length, bool writable)
    {
        CheckRange(windowOffset, length);
        int prot = LibC.PROT_READ | (writable ? LibC.PROT_WRITE : 0);
        nint want = _address + (nint)windowOffset;
        nint p = LibC.mmap(want, (nuint)length, prot, LibC.MAP_SHARED | LibC.MAP_FIXED, Fd.Raw(fd), (long)fdOffset);
        if (p == -1) throw PosixException.FromPInvoke($"mmap(fixed {length} at window {windowOffset})");
    }

    /// <summary>Replaces [windowOffset, windowOffset+length) with an inaccessible anonymous mapping again.</summary>
    public void UnmapFixed(ulong windowOffset, ulong length)
    {
        CheckRange(windowOffset, length);
        nint want = _address + (nint)windowOffset;
        nint p = LibC.mmap(want, (nuint)length, LibC.PROT_NONE, LibC.MAP_PRIVATE | LibC.MAP_ANONYMOUS | LibC.MAP_FIXED | LibC.MAP_NORESERVE, -1, 0);
        if (p == -1) throw PosixException.FromPInvoke($"mmap(unmap fixed {length} at {windowOffset})");
    }

    /// <summary>A span over [offset, offset+length).</summary>
    public Span<byte> Span(ulong offset, int length)
    {
        CheckRange(offset, (ulong)length);
        return new Span<byte>((void*)(_address + (nint)offset), length);
    }

    /// <summary>A span over the whole mapping (must be below 2 GiB).</summary>
    public Span<byte> AsSpan() => Span(0, checked((int)Length));

    private void CheckRange(ulong offset, ulong length)
    {
        ObjectDisposedException.ThrowIf(_address == 0, this);
        if (offset > Length || length > Length - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, +{length}) is outside a {Length}-byte mapping");
    }

    public void Dispose()
    {
        nint p = Interlocked.Exchange(ref _address, 0);
        if (p != 0) LibC.munmap(p, (nuint)Length);
    }
}
