using System.Buffers.Binary;

namespace Vism.VhostUser;

/// <summary>The 12-byte message header (host byte order; vism runs on little-endian x86-64).</summary>
/// <param name="Request">The request code.</param>
/// <param name="Flags">Version, REPLY and NEED_REPLY bits.</param>
/// <param name="Size">Payload bytes that follow.</param>
public readonly record struct MessageHeader(uint Request, uint Flags, uint Size)
{
    /// <summary>Whether the version bits say 1.</summary>
    public bool HasValidVersion => (Flags & VhostUserConstants.VersionMask) == VhostUserConstants.Version;

    /// <summary>Whether REPLY is set.</summary>
    public bool IsReply => (Flags & VhostUserConstants.ReplyFlag) != 0;

    /// <summary>Whether NEED_REPLY is set.</summary>
    public bool NeedsReply => (Flags & VhostUserConstants.NeedReplyFlag) != 0;

    /// <summary>Decodes a header.</summary>
    /// <param name="source">At least <see cref="VhostUserConstants.HeaderSize"/> bytes.</param>
    public static MessageHeader Read(ReadOnlySpan<byte> source) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(source),
        BinaryPrimitives.ReadUInt32LittleEndian(source[4..]),
        BinaryPrimitives.ReadUInt32LittleEndian(source[8..]));

    /// <summary>Encodes this header.</summary>
    /// <param name="destination">At least <see cref="VhostUserConstants.HeaderSize"/> bytes.</param>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, Request);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], Size);
    }
}

/// <summary>Builds whole messages (header + payload) as byte arrays.</summary>
public static class Message
{
    /// <summary>A message with <paramref name="payload"/>.</summary>
    /// <param name="request">Request code.</param>
    /// <param name="flags">Header flags (include the version).</param>
    /// <param name="payload">Payload bytes.</param>
    public static byte[] Build(uint request, uint flags, ReadOnlySpan<byte> payload)
    {
        var bytes = new byte[VhostUserConstants.HeaderSize + payload.Length];
        new MessageHeader(request, flags, (uint)payload.Length).Write(bytes);
        payload.CopyTo(bytes.AsSpan(VhostUserConstants.HeaderSize));
        return bytes;
    }

    /// <summary>A message whose payload is one u64.</summary>
    /// <param name="request">Request code.</param>
    /// <param name="flags">Header flags (include the version).</param>
    /// <param name="value">The payload value.</param>
    public static byte[] BuildU64(uint request, uint flags, ulong value)
    {
        Span<byte> p = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, value);
        return Build(request, flags, p);
    }
}

/// <summary>Vring state payload: u32 index, u32 num (8 bytes).</summary>
/// <param name="Index">Queue index.</param>
/// <param name="Num">Size, base or enable flag, depending on the request.</param>
public readonly record struct VringState(uint Index, uint Num)
{
    /// <summary>Payload size.</summary>
    public const int Size = 8;

    /// <summary>Decodes a payload of exactly <see cref="Size"/> bytes.</summary>
    /// <param name="payload">The payload.</param>
    /// <param name="value">The decoded value.</param>
    /// <returns>False when the length is wrong.</returns>
    public static bool TryRead(ReadOnlySpan<byte> payload, out VringState value)
    {
        value = default;
        if (payload.Length != Size) return false;
        value = new(BinaryPrimitives.ReadUInt32LittleEndian(payload), BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]));
        return true;
    }

    /// <summary>Encodes into <paramref name="destination"/>.</summary>
    /// <param name="destination">At least <see cref="Size"/> bytes.</param>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], Num);
    }

    /// <summary>The encoded payload.</summary>
    public byte[] ToBytes()
    {
        var b = new byte[Size];
        Write(b);
        return b;
    }
}

/// <summary>Vring address payload (40 bytes). Addresses are frontend user addresses unless
/// GPA_ADDRESSES was negotiated.</summary>
/// <param name="Index">Queue index.</param>
/// <param name="Flags">Bit 0: log used-ring writes.</param>
/// <param name="Descriptors">Descriptor table.</param>
/// <param name="Used">Used ring.</param>
/// <param name="Available">Available ring.</param>
/// <param name="Log">Log address of the used ring.</param>
public readonly record struct VringAddress(uint Index, uint Flags, ulong Descriptors, ulong Used, ulong Available, ulong Log)
{
    /// <summary>Payload size.</summary>
    public const int Size = 40;

    /// <summary>Decodes a payload of exactly <see cref="Size"/> bytes.</summary>
    /// <param name="payload">The payload.</param>
    /// <param name="value">The decoded value.</param>
    /// <returns>False when the length is wrong.</returns>
    public static bool TryRead(ReadOnlySpan<byte> payload, out VringAddress value)
    {
        value = default;
        if (payload.Length != Size) return false;
        value = new(BinaryPrimitives.ReadUInt32LittleEndian(payload), BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]),
            BinaryPrimitives.ReadUInt64LittleEndian(payload[8..]), BinaryPrimitives.ReadUInt64LittleEndian(payload[16..]),
            BinaryPrimitives.ReadUInt64LittleEndian(payload[24..]), BinaryPrimitives.ReadUInt64LittleEndian(payload[32..]));
        return true;
    }

    /// <summary>The encoded payload.</summary>
    public byte[] ToBytes()
    {
        var b = new byte[Size];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), Descriptors);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), Used);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(24), Available);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(32), Log);
        return b;
    }
}

/// <summary>One memory region of the memory table (32 bytes).</summary>
/// <param name="GuestAddress">Guest-physical address of the first byte.</param>
/// <param name="Size">Length in bytes.</param>
/// <param name="UserAddress">The frontend's virtual address of the first byte.</param>
/// <param name="MmapOffset">Offset of the first byte in the region's fd.</param>
public readonly record struct MemoryRegionDescriptor(ulong GuestAddress, ulong Size, ulong UserAddress, ulong MmapOffset)
{
    /// <summary>Encoded size.</summary>
    public const int EncodedSize = 32;

    /// <summary>Payload size of ADD_MEM_REG / REM_MEM_REG: u64 padding + one region.</summary>
    public const int SingleRegionPayloadSize = 8 + EncodedSize;

    /// <summary>Decodes an ADD_MEM_REG / REM_MEM_REG payload: u64 padding, then one region.</summary>
    /// <param name="payload">The payload.</param>
    /// <param name="value">The region.</param>
    /// <returns>False when the length is not <see cref="SingleRegionPayloadSize"/>.</returns>
    public static bool TryReadSingle(ReadOnlySpan<byte> payload, out MemoryRegionDescriptor value)
    {
        value = default;
        if (payload.Length != SingleRegionPayloadSize) return false;
        value = Read(payload[8..]);
        return true;
    }

    /// <summary>Decodes 32 bytes.</summary>
    /// <param name="source">At least <see cref="EncodedSize"/> bytes.</param>
    public static MemoryRegionDescriptor Read(ReadOnlySpan<byte> source) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(source), BinaryPrimitives.ReadUInt64LittleEndian(source[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(source[16..]), BinaryPrimitives.ReadUInt64LittleEndian(source[24..]));

    /// <summary>Encodes into 32 bytes.</summary>
    /// <param name="destination">At least <see cref="EncodedSize"/> bytes.</param>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(destination, GuestAddress);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], Size);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[16..], UserAddress);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[24..], MmapOffset);
    }

    /// <summary>Decodes a SET_MEM_TABLE payload: u32 nregions, u32 padding, regions.</summary>
    /// <param name="payload">The payload.</param>
    /// <param name="regions">The regions, when valid.</param>
    /// <param name="error">Why it is invalid.</param>
    /// <returns>Whether the payload is well formed.</returns>
    public static bool TryReadTable(ReadOnlySpan<byte> payload, out MemoryRegionDescriptor[] regions, out string? error)
    {
        regions = [];
        error = null;
        if (payload.Length < 8)
        {
            error = $"SET_MEM_TABLE payload of {payload.Length} bytes is shorter than its 8-byte header";
            return false;
        }
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(payload);
        if (n > VhostUserConstants.MaxMemTableRegions)
        {
            error = $"SET_MEM_TABLE names {n} regions; at most {VhostUserConstants.MaxMemTableRegions}";
            return false;
        }
        if (payload.Length != 8 + (int)n * EncodedSize)
        {
            error = $"SET_MEM_TABLE with {n} regions must be {8 + n * EncodedSize} bytes, not {payload.Length}";
            return false;
        }
        regions = new MemoryRegionDescriptor[n];
        for (int i = 0; i < n; i++)
            regions[i] = Read(payload.Slice(8 + i * EncodedSize, EncodedSize));
        return true;
    }

    /// <summary>Encodes a SET_MEM_TABLE payload.</summary>
    /// <param name="regions">At most 8 regions.</param>
    public static byte[] EncodeTable(ReadOnlySpan<MemoryRegionDescriptor> regions)
    {
        var b = new byte[8 + regions.Length * EncodedSize];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)regions.Length);
        for (int i = 0; i < regions.Length; i++)
            regions[i].Write(b.AsSpan(8 + i * EncodedSize));
        return b;
    }

    /// <summary>Encodes an ADD_MEM_REG / REM_MEM_REG payload.</summary>
    public byte[] EncodeSingle()
    {
        var b = new byte[SingleRegionPayloadSize];
        Write(b.AsSpan(8));
        return b;
    }
}

/// <summary>GET/SET_CONFIG payload header: u32 offset, u32 size, u32 flags, then <c>size</c> bytes.</summary>
/// <param name="Offset">Offset in config space.</param>
/// <param name="Length">Bytes of config data that follow.</param>
/// <param name="Flags">0 = writable fields, 1 = migration.</param>
public readonly record struct ConfigHeader(uint Offset, uint Length, uint Flags)
{
    /// <summary>Header size.</summary>
    public const int Size = 12;

    /// <summary>Decodes the header of a config payload and checks the payload length matches it.</summary>
    /// <param name="payload">The whole payload.</param>
    /// <param name="value">The header.</param>
    /// <param name="error">Why it is invalid.</param>
    /// <returns>Whether the payload is consistent.</returns>
    public static bool TryRead(ReadOnlySpan<byte> payload, out ConfigHeader value, out string? error)
    {
        value = default;
        error = null;
        if (payload.Length < Size)
        {
            error = $"config payload of {payload.Length} bytes is shorter than its 12-byte header";
            return false;
        }
        value = new(BinaryPrimitives.ReadUInt32LittleEndian(payload), BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]),
            BinaryPrimitives.ReadUInt32LittleEndian(payload[8..]));
        if (value.Length > VhostUserConstants.MaxConfigSize)
        {
            error = $"config size {value.Length} exceeds {VhostUserConstants.MaxConfigSize}";
            return false;
        }
        if (payload.Length != Size + (int)value.Length)
        {
            error = $"config payload names {value.Length} data bytes but carries {payload.Length - Size}";
            return false;
        }
        return true;
    }

    /// <summary>Encodes the header followed by <paramref name="data"/>.</summary>
    /// <param name="data">Config bytes (their length must equal <see cref="Length"/>).</param>
    public byte[] Encode(ReadOnlySpan<byte> data)
    {
        var b = new byte[Size + data.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Offset);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), Length);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), Flags);
        data.CopyTo(b.AsSpan(Size));
        return b;
    }
}

/// <summary>SHMEM_MAP / SHMEM_UNMAP payload (40 bytes): u8 shmid, u8 padding[7], u64 fd_offset,
/// u64 shm_offset, u64 len, u64 flags.</summary>
/// <param name="ShmId">Shared memory region id.</param>
/// <param name="FdOffset">Offset in the fd.</param>
/// <param name="ShmOffset">Offset in the region.</param>
/// <param name="Length">Bytes.</param>
/// <param name="Flags">Bit 0 = read-write.</param>
public readonly record struct ShmemMapPayload(byte ShmId, ulong FdOffset, ulong ShmOffset, ulong Length, ulong Flags)
{
    /// <summary>Payload size.</summary>
    public const int Size = 40;

    /// <summary>Whether the mapping is read-write.</summary>
    public bool Writable => (Flags & VhostUserConstants.MapFlagReadWrite) != 0;

    /// <summary>Decodes a payload of exactly <see cref="Size"/> bytes.</summary>
    /// <param name="payload">The payload.</param>
    /// <param name="value">The decoded value.</param>
    /// <returns>False when the length is wrong.</returns>
    public static bool TryRead(ReadOnlySpan<byte> payload, out ShmemMapPayload value)
    {
        value = default;
        if (payload.Length != Size) return false;
        value = new(payload[0], BinaryPrimitives.ReadUInt64LittleEndian(payload[8..]), BinaryPrimitives.ReadUInt64LittleEndian(payload[16..]),
            BinaryPrimitives.ReadUInt64LittleEndian(payload[24..]), BinaryPrimitives.ReadUInt64LittleEndian(payload[32..]));
        return true;
    }

    /// <summary>The encoded payload.</summary>
    public byte[] ToBytes()
    {
        var b = new byte[Size];
        b[0] = ShmId;
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), FdOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), ShmOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(24), Length);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(32), Flags);
        return b;
    }
}

/// <summary>GET_SHMEM_CONFIG reply: u32 nregions, u32 padding, u64 memory_sizes[256] (index = shmid).</summary>
public static class ShmemConfig
{
    /// <summary>Reply payload size.</summary>
    public const int Size = 8 + 8 * VhostUserConstants.MaxShmemRegions;

    /// <summary>Encodes the sizes (index = shmid; 0 = unused). nregions counts the non-zero entries.</summary>
    /// <param name="sizes">Up to 256 sizes.</param>
    public static byte[] Encode(ReadOnlySpan<ulong> sizes)
    {
        if (sizes.Length > VhostUserConstants.MaxShmemRegions) throw new ArgumentException("at most 256 shared memory regions", nameof(sizes));
        var b = new byte[Size];
        uint n = 0;
        for (int i = 0; i < sizes.Length; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8 + 8 * i), sizes[i]);
            if (sizes[i] != 0) n++;
        }
        BinaryPrimitives.WriteUInt32LittleEndian(b, n);
        return b;
    }

    /// <summary>Decodes a reply payload.</summary>
    /// <param name="payload">The payload.</param>
    /// <param name="sizes">256 sizes indexed by shmid.</param>
    /// <returns>False when the length or the count is inconsistent.</returns>
    public static bool TryRead(ReadOnlySpan<byte> payload, out ulong[] sizes)
    {
        sizes = [];
        if (payload.Length != Size) return false;
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(payload);
        var s = new ulong[VhostUserConstants.MaxShmemRegions];
        uint nonZero = 0;
        for (int i = 0; i < s.Length; i++)
        {
            s[i] = BinaryPrimitives.ReadUInt64LittleEndian(payload[(8 + 8 * i)..]);
            if (s[i] != 0) nonZero++;
        }
        if (nonZero != n) return false;
        sizes = s;
        return true;
    }
}

/// <summary>Helpers for the u64 payloads.</summary>
public static class U64Payload
{
    /// <summary>Payload size.</summary>
    public const int Size = 8;

    /// <summary>Decodes a payload of exactly 8 bytes.</summary>
    /// <param name="payload">The payload.</param>
    /// <param name="value">The value.</param>
    /// <returns>False when the length is wrong.</returns>
    public static bool TryRead(ReadOnlySpan<byte> payload, out ulong value)
    {
        value = 0;
        if (payload.Length != Size) return false;
        value = BinaryPrimitives.ReadUInt64LittleEndian(payload);
        return true;
    }

    /// <summary>The encoded payload.</summary>
    /// <param name="value">The value.</param>
    public static byte[] ToBytes(ulong value)
    {
        var b = new byte[Size];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return b;
    }
}
