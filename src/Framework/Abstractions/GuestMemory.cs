using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Vism.Abstractions;

/// <summary>
/// The driver's memory as the device sees it: guest-physical addresses mapped into this process.
/// Every access the device makes goes through <see cref="TryTranslate(ulong, ulong, out nint)"/>, which checks the whole
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

    /// <summary>
    /// <see cref="TryTranslate(ulong, ulong, out nint)"/>, and whether the memory behind the range
    /// may shrink under the device: a VMM that keeps a descriptor of memory that cannot be sealed
    /// against shrinking (a hugetlbfs or plain file, a memfd without F_SEAL_SHRINK) can truncate or
    /// punch it at any moment, and a load or store through the pointer would then raise SIGBUS,
    /// which ends the whole process. <see cref="GuestMemoryExtensions"/> never dereferences such a
    /// range: it copies through <c>process_vm_readv</c>/<c>process_vm_writev</c> on this process,
    /// which fail with EFAULT where a load would fault. The default says the memory cannot shrink.
    /// </summary>
    /// <param name="address">Guest-physical start address.</param>
    /// <param name="length">Length in bytes.</param>
    /// <param name="host">The host address of <paramref name="address"/> on success.</param>
    /// <param name="mayFault">True when the range must only be accessed through a fault-safe copy.</param>
    /// <returns>Whether the whole range is mapped.</returns>
    bool TryTranslate(ulong address, ulong length, out nint host, out bool mayFault)
    {
        mayFault = false;
        return TryTranslate(address, length, out host);
    }
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
        if (!memory.TryTranslate(address, (ulong)destination.Length, out nint host, out bool mayFault))
            return false;
        if (mayFault)
            return FaultSafeCopy.Read(host, destination);
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
        if (!memory.TryTranslate(address, (ulong)source.Length, out nint host, out bool mayFault))
            return false;
        if (mayFault)
            return FaultSafeCopy.Write(host, source);
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
        if (!memory.TryTranslate(address, 2, out nint host, out bool mayFault))
        {
            value = 0;
            return false;
        }
        if (mayFault)
        {
            Span<byte> b = stackalloc byte[2];
            bool ok = FaultSafeCopy.Read(host, b);
            value = ok ? BinaryPrimitives.ReadUInt16LittleEndian(b) : (ushort)0;
            return ok;
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
        if (!memory.TryTranslate(address, 2, out nint host, out bool mayFault))
            return false;
        if (mayFault)
        {
            Span<byte> b = stackalloc byte[2];
            BinaryPrimitives.WriteUInt16LittleEndian(b, value);
            return FaultSafeCopy.Write(host, b);
        }
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

/// <summary>
/// Copies between this process's memory and a mapping that may shrink under it, with
/// <c>process_vm_readv</c>/<c>process_vm_writev</c> on this very process: the kernel resolves the
/// mapping's pages itself and returns EFAULT for a page past the end of a truncated file (or a
/// hugetlb hole with no page to give), where a load or store would raise SIGBUS. One system call
/// per access, so it serves the rings (controlq, eventq), never region data (which vism does not
/// touch). Caveat: the kernel copies byte-wise, so a 16-bit ring index written this way is not one
/// single store.
/// </summary>
internal static unsafe partial class FaultSafeCopy
{
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    private static readonly int Pid = Environment.ProcessId;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "process_vm_readv", SetLastError = true)]
    private static partial nint process_vm_readv(int pid, IoVec* local, nuint localCount, IoVec* remote, nuint remoteCount, nuint flags);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "process_vm_writev", SetLastError = true)]
    private static partial nint process_vm_writev(int pid, IoVec* local, nuint localCount, IoVec* remote, nuint remoteCount, nuint flags);

    /// <summary>Copies <paramref name="destination"/>.Length bytes from <paramref name="source"/>.</summary>
    /// <returns>False when any of them could not be read (the mapping shrank).</returns>
    public static bool Read(nint source, Span<byte> destination)
    {
        if (destination.IsEmpty) return true;
        fixed (byte* d = destination)
        {
            var local = new IoVec { Base = d, Length = (nuint)destination.Length };
            var remote = new IoVec { Base = (void*)source, Length = (nuint)destination.Length };
            return process_vm_readv(Pid, &local, 1, &remote, 1, 0) == destination.Length;
        }
    }

    /// <summary>Copies <paramref name="source"/> to <paramref name="destination"/>.</summary>
    /// <returns>False when not all of it could be written (the mapping shrank).</returns>
    public static bool Write(nint destination, ReadOnlySpan<byte> source)
    {
        if (source.IsEmpty) return true;
        fixed (byte* s = source)
        {
            var local = new IoVec { Base = s, Length = (nuint)source.Length };
            var remote = new IoVec { Base = (void*)destination, Length = (nuint)source.Length };
            return process_vm_writev(Pid, &local, 1, &remote, 1, 0) == source.Length;
        }
    }
}
