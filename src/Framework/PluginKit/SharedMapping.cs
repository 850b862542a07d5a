using System.Runtime.InteropServices;

namespace Vism.PluginKit;

/// <summary>A MAP_SHARED mapping of a file's range into this process, read through spans (no
/// unsafe code), unmapped exactly once by <see cref="Dispose"/>. Spans must not be used after
/// dispose; <see cref="Dispose"/> must not race with a reader.</summary>
public sealed unsafe class SharedMapping : IDisposable
{
    private nint _address;

    private SharedMapping(nint address, ulong length)
    {
        _address = address;
        Length = length;
    }

    /// <summary>Start address (0 after dispose), for passing to native code.</summary>
    public nint Address => _address;

    /// <summary>Length in bytes.</summary>
    public ulong Length { get; }

    /// <summary>Whether the mapping was made writable.</summary>
    public bool Writable { get; private init; }

    /// <summary>Maps <paramref name="length"/> bytes of <paramref name="fd"/> from <paramref name="offset"/>.</summary>
    /// <param name="fd">The file (for example <c>IMemoryBlock.Handle</c>).</param>
    /// <param name="offset">File offset (page aligned).</param>
    /// <param name="length">Bytes to map.</param>
    /// <param name="writable">PROT_WRITE as well as PROT_READ.</param>
    /// <param name="populate">MAP_POPULATE: fault every page in now.</param>
    /// <returns>The mapping.</returns>
    /// <exception cref="NativeCallException">When mmap fails (a misaligned offset, a sealed file mapped writable).</exception>
    public static SharedMapping Map(SafeHandle fd, ulong offset, ulong length, bool writable = true, bool populate = false)
    {
        nint p = MapShared(fd, offset, length, writable, populate);
        return new SharedMapping(p, length) { Writable = writable };
    }

    /// <summary>mmap(MAP_SHARED) of a file range; the address, or a <see cref="NativeCallException"/>.
    /// Vism.Native's mappings use it too.</summary>
    internal static nint MapShared(SafeHandle fd, ulong offset, ulong length, bool writable, bool populate)
    {
        if (length == 0 || length > (ulong)nint.MaxValue || offset > long.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(length), $"cannot map {length} bytes at offset {offset}");
        int prot = Interop.PROT_READ | (writable ? Interop.PROT_WRITE : 0);
        int flags = Interop.MAP_SHARED | (populate ? Interop.MAP_POPULATE : 0);
        nint p = Interop.mmap(0, (nuint)length, prot, flags, Interop.Raw(fd), (long)offset);
        GC.KeepAlive(fd);
        if (p == -1) throw NativeCallException.Last($"mmap({length} bytes at {offset})");
        return p;
    }

    /// <summary>A span over [<paramref name="offset"/>, +<paramref name="length"/>).</summary>
    /// <param name="offset">First byte.</param>
    /// <param name="length">Bytes.</param>
    /// <returns>The span.</returns>
    /// <exception cref="ArgumentOutOfRangeException">When the range is outside the mapping.</exception>
    public Span<byte> Span(ulong offset, int length)
    {
        ObjectDisposedException.ThrowIf(_address == 0, this);
        if (length < 0 || offset > Length || (ulong)length > Length - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, +{length}) is outside a {Length}-byte mapping");
        return new Span<byte>((void*)(_address + (nint)offset), length);
    }

    /// <summary>A span over the whole mapping (which must be below 2 GiB).</summary>
    /// <returns>The span.</returns>
    public Span<byte> AsSpan() => Span(0, checked((int)Length));

    /// <summary>Unmaps (once).</summary>
    public void Dispose()
    {
        nint p = Interlocked.Exchange(ref _address, 0);
        if (p != 0) Interop.munmap(p, (nuint)Length);
    }
}
