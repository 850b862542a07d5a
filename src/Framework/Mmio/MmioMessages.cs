using System.Buffers.Binary;
using System.Text;
using Vism.Abstractions;

namespace Vism.Mmio;

// Payload layouts, little endian, naturally aligned (docs/mmio-protocol.md). Every decoder checks
// the exact size first and returns false for a malformed payload; it never throws.

/// <summary>HELLO: <c>u32 magic, u32 version</c>.</summary>
/// <param name="Magic">Must be <see cref="MmioProtocol.Magic"/>.</param>
/// <param name="Version">The sender's protocol version.</param>
public readonly record struct HelloRequest(uint Magic, uint Version)
{
    /// <summary>Encoded size.</summary>
    public const int Size = 8;

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var b = new byte[Size];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), Version);
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The request.</param>
    /// <returns>False when the size is wrong.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out HelloRequest value)
    {
        value = default;
        if (p.Length != Size) return false;
        value = new(BinaryPrimitives.ReadUInt32LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p[4..]));
        return true;
    }
}

/// <summary>HELLO reply: <c>u32 magic, u32 version, u32 device_id, u32 window_size, u32 vectors,
/// u32 nshm, then nshm × { u8 shmid, u8 pad[7], u64 length }</c>.</summary>
/// <param name="Magic">Always <see cref="MmioProtocol.Magic"/>.</param>
/// <param name="Version">The device's protocol version.</param>
/// <param name="DeviceId">The virtio device ID (as DeviceID reads).</param>
/// <param name="WindowSize">Bytes of register window the VMM should trap.</param>
/// <param name="Vectors">Per-region interrupt vectors the device may fire (lines 1..vectors).</param>
/// <param name="SharedMemory">The device's shared-memory windows (the VMM places each in guest-physical space).</param>
public sealed record HelloReply(uint Magic, uint Version, uint DeviceId, uint WindowSize, uint Vectors, IReadOnlyList<SharedMemoryWindow> SharedMemory)
{
    private const int FixedSize = 24;
    private const int WindowEntrySize = 16;

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        if (SharedMemory.Count > MmioProtocol.MaxSharedMemoryWindows)
            throw new InvalidOperationException($"at most {MmioProtocol.MaxSharedMemoryWindows} shared-memory windows");
        var b = new byte[FixedSize + WindowEntrySize * SharedMemory.Count];
        Span<byte> s = b;
        BinaryPrimitives.WriteUInt32LittleEndian(s, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(s[4..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], DeviceId);
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], WindowSize);
        BinaryPrimitives.WriteUInt32LittleEndian(s[16..], Vectors);
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], (uint)SharedMemory.Count);
        for (int i = 0; i < SharedMemory.Count; i++)
        {
            Span<byte> e = s[(FixedSize + WindowEntrySize * i)..];
            e[0] = (byte)SharedMemory[i].Id;
            BinaryPrimitives.WriteUInt64LittleEndian(e[8..], SharedMemory[i].Length);
        }
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The reply.</param>
    /// <returns>False when the size does not match the window count.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out HelloReply? value)
    {
        value = null;
        if (p.Length < FixedSize) return false;
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(p[20..]);
        if (n > MmioProtocol.MaxSharedMemoryWindows || p.Length != FixedSize + WindowEntrySize * (int)n) return false;
        var windows = new SharedMemoryWindow[n];
        for (int i = 0; i < n; i++)
        {
            ReadOnlySpan<byte> e = p[(FixedSize + WindowEntrySize * i)..];
            windows[i] = new SharedMemoryWindow((ShmId)e[0], BinaryPrimitives.ReadUInt64LittleEndian(e[8..]));
        }
        value = new HelloReply(BinaryPrimitives.ReadUInt32LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p[4..]),
            BinaryPrimitives.ReadUInt32LittleEndian(p[8..]), BinaryPrimitives.ReadUInt32LittleEndian(p[12..]),
            BinaryPrimitives.ReadUInt32LittleEndian(p[16..]), windows);
        return true;
    }
}

/// <summary>One guest RAM region of SET_MEM_TABLE: <c>u64 guest_phys, u64 size, u64 fd_offset</c>.</summary>
/// <param name="GuestPhysical">Guest-physical address of the first byte (page aligned).</param>
/// <param name="Size">Bytes (a positive page multiple).</param>
/// <param name="FdOffset">Offset of the first byte in the region's descriptor (page aligned).</param>
public readonly record struct MemoryRegion(ulong GuestPhysical, ulong Size, ulong FdOffset);

/// <summary>SET_MEM_TABLE: <c>u32 nregions, u32 pad, then nregions × MemoryRegion</c>; one descriptor per region, in order.</summary>
public static class SetMemTable
{
    private const int RegionSize = 24;

    /// <summary>Encodes the payload.</summary>
    /// <param name="regions">1 to <see cref="MmioProtocol.MaxMemoryRegions"/> regions.</param>
    public static byte[] Encode(IReadOnlyList<MemoryRegion> regions)
    {
        var b = new byte[8 + RegionSize * regions.Count];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)regions.Count);
        for (int i = 0; i < regions.Count; i++)
        {
            Span<byte> e = b.AsSpan(8 + RegionSize * i);
            BinaryPrimitives.WriteUInt64LittleEndian(e, regions[i].GuestPhysical);
            BinaryPrimitives.WriteUInt64LittleEndian(e[8..], regions[i].Size);
            BinaryPrimitives.WriteUInt64LittleEndian(e[16..], regions[i].FdOffset);
        }
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="regions">The regions.</param>
    /// <returns>False when the count is 0, above the limit, or does not match the size.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out MemoryRegion[] regions)
    {
        regions = [];
        if (p.Length < 8) return false;
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(p);
        if (n == 0 || n > MmioProtocol.MaxMemoryRegions || p.Length != 8 + RegionSize * (int)n) return false;
        regions = new MemoryRegion[n];
        for (int i = 0; i < n; i++)
        {
            ReadOnlySpan<byte> e = p[(8 + RegionSize * i)..];
            regions[i] = new MemoryRegion(BinaryPrimitives.ReadUInt64LittleEndian(e),
                BinaryPrimitives.ReadUInt64LittleEndian(e[8..]), BinaryPrimitives.ReadUInt64LittleEndian(e[16..]));
        }
        return true;
    }
}

/// <summary>SET_IRQ_FD: <c>u32 line, u32 pad</c>; zero or one descriptor (an eventfd).</summary>
/// <param name="Line">0 = the standard line; 1 + v = per-region vector v.</param>
public readonly record struct SetIrqFd(uint Line)
{
    /// <summary>Encoded size.</summary>
    public const int Size = 8;

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var b = new byte[Size];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Line);
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The request.</param>
    /// <returns>False when the size is wrong.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out SetIrqFd value)
    {
        value = default;
        if (p.Length != Size) return false;
        value = new(BinaryPrimitives.ReadUInt32LittleEndian(p));
        return true;
    }
}

/// <summary>SET_SHM_BASE: <c>u8 shmid, u8 pad[7], u64 guest_phys</c>.</summary>
/// <param name="Id">The window.</param>
/// <param name="GuestPhysical">Its guest-physical base.</param>
public readonly record struct SetShmBase(ShmId Id, ulong GuestPhysical)
{
    /// <summary>Encoded size.</summary>
    public const int Size = 16;

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var b = new byte[Size];
        b[0] = (byte)Id;
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), GuestPhysical);
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The request.</param>
    /// <returns>False when the size is wrong.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out SetShmBase value)
    {
        value = default;
        if (p.Length != Size) return false;
        value = new((ShmId)p[0], BinaryPrimitives.ReadUInt64LittleEndian(p[8..]));
        return true;
    }
}

/// <summary>READ and WRITE: <c>u32 offset, u32 width, u64 value</c> (READ leaves value 0).
/// The READ reply payload is <c>u64 value</c>.</summary>
/// <param name="Offset">Byte offset in the register window.</param>
/// <param name="Width">Access width in bytes (1, 2, 4 or 8).</param>
/// <param name="Value">The value written (WRITE).</param>
public readonly record struct RegisterAccess(uint Offset, uint Width, ulong Value)
{
    /// <summary>Encoded size.</summary>
    public const int Size = 16;

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var b = new byte[Size];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Offset);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), Width);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), Value);
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The request.</param>
    /// <returns>False when the size is wrong.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out RegisterAccess value)
    {
        value = default;
        if (p.Length != Size) return false;
        value = new(BinaryPrimitives.ReadUInt32LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p[4..]),
            BinaryPrimitives.ReadUInt64LittleEndian(p[8..]));
        return true;
    }
}

/// <summary>The READ reply: <c>u64 value</c>.</summary>
public static class ReadReply
{
    /// <summary>Encoded size.</summary>
    public const int Size = 8;

    /// <summary>Encodes the payload.</summary>
    /// <param name="value">The value read.</param>
    public static byte[] Encode(ulong value)
    {
        var b = new byte[Size];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The value.</param>
    /// <returns>False when the size is wrong.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out ulong value)
    {
        value = 0;
        if (p.Length != Size) return false;
        value = BinaryPrimitives.ReadUInt64LittleEndian(p);
        return true;
    }
}

/// <summary>NOTIFY: <c>u64 offset, u32 width, u32 pad, u64 value</c>.</summary>
/// <param name="Offset">Byte offset inside the NOTIFY window.</param>
/// <param name="Width">Access width (1, 2, 4 or 8).</param>
/// <param name="Value">The value the guest wrote (ignored by ISM).</param>
public readonly record struct NotifyWrite(ulong Offset, uint Width, ulong Value)
{
    /// <summary>Encoded size.</summary>
    public const int Size = 24;

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var b = new byte[Size];
        BinaryPrimitives.WriteUInt64LittleEndian(b, Offset);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), Width);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), Value);
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The request.</param>
    /// <returns>False when the size is wrong.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out NotifyWrite value)
    {
        value = default;
        if (p.Length != Size) return false;
        value = new(BinaryPrimitives.ReadUInt64LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(p[16..]));
        return true;
    }
}

/// <summary>SET_NOTIFY_FD: <c>u64 offset</c>; 0 or 1 descriptor (an eventfd).</summary>
/// <param name="Offset">Byte offset inside the NOTIFY window whose writes the eventfd stands for.</param>
public readonly record struct SetNotifyFd(ulong Offset)
{
    /// <summary>Encoded size.</summary>
    public const int Size = 8;

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var b = new byte[Size];
        BinaryPrimitives.WriteUInt64LittleEndian(b, Offset);
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The request.</param>
    /// <returns>False when the size is wrong.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out SetNotifyFd value)
    {
        value = default;
        if (p.Length != Size) return false;
        value = new(BinaryPrimitives.ReadUInt64LittleEndian(p));
        return true;
    }
}

/// <summary>SET_QUEUE_CALL_FD: <c>u32 queue, u32 pad</c>; 0 or 1 descriptor (an eventfd).</summary>
/// <param name="Queue">The virtqueue index (QueueSel's value).</param>
public readonly record struct SetQueueCallFd(uint Queue)
{
    /// <summary>Encoded size.</summary>
    public const int Size = 8;

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var b = new byte[Size];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Queue);
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The request.</param>
    /// <returns>False when the size is wrong or the pad is not zero.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out SetQueueCallFd value)
    {
        value = default;
        if (p.Length != Size || BinaryPrimitives.ReadUInt32LittleEndian(p[4..]) != 0) return false;
        value = new(BinaryPrimitives.ReadUInt32LittleEndian(p));
        return true;
    }
}

/// <summary>MAP: <c>u8 shmid, u8 flags, u8 pad[6], u64 shm_offset, u64 fd_offset, u64 length</c>; one descriptor.
/// UNMAP uses the same layout with flags 0, fd_offset 0 and no descriptor.</summary>
/// <param name="Id">The window.</param>
/// <param name="Writable">flags bit 0: map read-write (otherwise read-only).</param>
/// <param name="ShmOffset">Offset inside the window (page aligned).</param>
/// <param name="FdOffset">Offset inside the descriptor (page aligned).</param>
/// <param name="Length">Bytes (a positive page multiple).</param>
public readonly record struct WindowMapping(ShmId Id, bool Writable, ulong ShmOffset, ulong FdOffset, ulong Length)
{
    /// <summary>Encoded size.</summary>
    public const int Size = 32;

    /// <summary>flags bit 0.</summary>
    public const byte FlagWritable = 1;

    /// <summary>Encodes the payload.</summary>
    public byte[] Encode()
    {
        var b = new byte[Size];
        b[0] = (byte)Id;
        b[1] = Writable ? FlagWritable : (byte)0;
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), ShmOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), FdOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(24), Length);
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The request.</param>
    /// <returns>False when the size is wrong or undefined flag bits are set.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out WindowMapping value)
    {
        value = default;
        if (p.Length != Size || (p[1] & ~FlagWritable) != 0) return false;
        value = new((ShmId)p[0], (p[1] & FlagWritable) != 0, BinaryPrimitives.ReadUInt64LittleEndian(p[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(p[16..]), BinaryPrimitives.ReadUInt64LittleEndian(p[24..]));
        return true;
    }
}

/// <summary>REJECT: <c>u32 status, u32 length, u8 reason[length]</c> (UTF-8).</summary>
/// <param name="Status">Why, as a status code.</param>
/// <param name="Reason">Why, in words.</param>
public readonly record struct RejectMessage(MmioStatus Status, string Reason)
{
    /// <summary>Encodes the payload (the reason is cut to fit <see cref="MmioProtocol.MaxPayload"/>).</summary>
    public byte[] Encode()
    {
        byte[] text = Encoding.UTF8.GetBytes(Reason);
        int n = Math.Min(text.Length, MmioProtocol.MaxPayload - 8);
        var b = new byte[8 + n];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)Status);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), (uint)n);
        text.AsSpan(0, n).CopyTo(b.AsSpan(8));
        return b;
    }

    /// <summary>Decodes a payload.</summary>
    /// <param name="p">The payload.</param>
    /// <param name="value">The message.</param>
    /// <returns>False when the length does not match.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> p, out RejectMessage value)
    {
        value = default;
        if (p.Length < 8) return false;
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
        if (n != (uint)(p.Length - 8)) return false;
        value = new((MmioStatus)BinaryPrimitives.ReadUInt32LittleEndian(p), Encoding.UTF8.GetString(p[8..]));
        return true;
    }
}
