using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Vism.Abstractions;

/// <summary>
/// The driver's memory as the device sees it: guest-physical addresses mapped into this process.
/// Every access the device makes goes through <see cref="TryTranslate"/>, which checks the whole
/// range against the memory map before any pointer is formed.
/// </summary>
public interface IGuestMemory
{
    /// <summary>
    /// Translates the guest-physical range [<paramref name="address"/>,
    /// <paramref name="address"/> + <paramref name="length"/>) to a host address. Succeeds only if
    /// the whole range lies inside one mapped region and does not wrap around 2^64.
    /// The pointer stays valid until the transport changes the memory map, which happens only on
    /// the device's loop thread, so it must not be kept across loop turns.
    /// </summary>
    /// <param name="address">Guest-physical start address.</param>
    /// <param name="length">Length in bytes; zero is allowed if <paramref name="address"/> is mapped.</param>
    /// <param name="host">The host address of <paramref name="address"/> on success.</param>
    /// <returns>Whether the whole range is mapped.</returns>
    bool TryTranslate(ulong address, ulong length, out nint host);
}

/// <summary>Bounds-checked accessors over <see cref="IGuestMemory"/>. Multi-byte values are little endian.</summary>
public static unsafe class GuestMemoryExtensions
{
    /// <summary>Copies guest bytes at <paramref name="address"/> into <paramref name="destination"/>.</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="address">Guest-physical address.</param>
    /// <param name="destination">Receives the bytes.</param>
    /// <returns>False (and nothing copied) when the range is not wholly mapped.</returns>
    public static bool TryRead(this IGuestMemory memory, ulong address, Span<byte> destination)
    {
        if (!memory.TryTranslate(address, (ulong)destination.Length, out nint host))
            return false;
        new ReadOnlySpan<byte>((void*)host, destination.Length).CopyTo(destination);
        return true;
    }

    /// <summary>Copies <paramref name="source"/> into guest memory at <paramref name="address"/>.</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="address">Guest-physical address.</param>
    /// <param name="source">The bytes to write.</param>
    /// <returns>False (and nothing written) when the range is not wholly mapped.</returns>
    public static bool TryWrite(this IGuestMemory memory, ulong address, ReadOnlySpan<byte> source)
    {
        if (!memory.TryTranslate(address, (ulong)source.Length, out nint host))
            return false;
        source.CopyTo(new Span<byte>((void*)host, source.Length));
        return true;
    }

    /// <summary>Reads a little-endian u16 with acquire semantics (ring indices).</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="address">Guest-physical address, any alignment.</param>
    /// <param name="value">The value read.</param>
    /// <returns>False when the two bytes are not mapped.</returns>
    public static bool TryReadUInt16(this IGuestMemory memory, ulong address, out ushort value)
    {
        if (!memory.TryTranslate(address, 2, out nint host))
        {
            value = 0;
            return false;
        }
        ushort raw = (host & 1) == 0 ? Volatile.Read(ref *(ushort*)host) : Unsafe.ReadUnaligned<ushort>((void*)host);
        value = BinaryPrimitives.ReadUInt16LittleEndian(MemoryMarshalBytes(ref raw));
        return true;
    }

    /// <summary>Writes a little-endian u16 with release semantics (ring indices).</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="address">Guest-physical address, any alignment.</param>
    /// <param name="value">The value to write.</param>
    /// <returns>False when the two bytes are not mapped.</returns>
    public static bool TryWriteUInt16(this IGuestMemory memory, ulong address, ushort value)
    {
        if (!memory.TryTranslate(address, 2, out nint host))
            return false;
        ushort le = BitConverter.IsLittleEndian ? value : BinaryPrimitives.ReverseEndianness(value);
        if ((host & 1) == 0)
            Volatile.Write(ref *(ushort*)host, le);
        else
            Unsafe.WriteUnaligned((void*)host, le);
        return true;
    }

    /// <summary>Reads a little-endian u32.</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="address">Guest-physical address.</param>
    /// <param name="value">The value read.</param>
    /// <returns>False when the bytes are not mapped.</returns>
    public static bool TryReadUInt32(this IGuestMemory memory, ulong address, out uint value)
    {
        Span<byte> b = stackalloc byte[4];
        bool ok = memory.TryRead(address, b);
        value = ok ? BinaryPrimitives.ReadUInt32LittleEndian(b) : 0;
        return ok;
    }

    /// <summary>Writes a little-endian u32.</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="address">Guest-physical address.</param>
    /// <param name="value">The value to write.</param>
    /// <returns>False when the bytes are not mapped.</returns>
    public static bool TryWriteUInt32(this IGuestMemory memory, ulong address, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        return memory.TryWrite(address, b);
    }

    /// <summary>Reads a little-endian u64.</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="address">Guest-physical address.</param>
    /// <param name="value">The value read.</param>
    /// <returns>False when the bytes are not mapped.</returns>
    public static bool TryReadUInt64(this IGuestMemory memory, ulong address, out ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        bool ok = memory.TryRead(address, b);
        value = ok ? BinaryPrimitives.ReadUInt64LittleEndian(b) : 0;
        return ok;
    }

    /// <summary>Writes a little-endian u64.</summary>
    /// <param name="memory">Guest memory.</param>
    /// <param name="address">Guest-physical address.</param>
    /// <param name="value">The value to write.</param>
    /// <returns>False when the bytes are not mapped.</returns>
    public static bool TryWriteUInt64(this IGuestMemory memory, ulong address, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return memory.TryWrite(address, b);
    }

    private static ReadOnlySpan<byte> MemoryMarshalBytes(ref ushort value) =>
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(new ReadOnlySpan<ushort>(ref value));
}
