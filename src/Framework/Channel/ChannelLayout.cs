using System.Buffers.Binary;

namespace Vism.Channel;

/// <summary>
/// The region layout of a vism channel (docs/channel.md, "Region layout"): a 4 KiB header, then
/// ring 0 (creator to acceptor) and ring 1 (acceptor to creator). All fields are little-endian.
/// </summary>
public static class ChannelLayout
{
    /// <summary>"VISMCHN1" read as a little-endian u64.</summary>
    public const ulong Magic = 0x314E48434D534956;

    /// <summary>The protocol version this library speaks (2: each line's wait sequence lives in its
    /// own cache line, <see cref="LineWaitSeq"/> bytes after the cursor; version 1 had it beside the cursor).</summary>
    public const uint Version = 2;

    /// <summary>Bytes of the header; ring 0 starts here.</summary>
    public const int HeaderSize = 4096;

    /// <summary>Smallest region a channel fits in (header and two 4 KiB rings).</summary>
    public const ulong MinRegionSize = HeaderSize + 2 * 4096;

    /// <summary>u64 magic.</summary>
    public const int MagicOffset = 0x00;
    /// <summary>u32 version.</summary>
    public const int VersionOffset = 0x08;
    /// <summary>u32 header size.</summary>
    public const int HeaderSizeOffset = 0x0C;
    /// <summary>u64 bytes of each ring's data area.</summary>
    public const int RingSizeOffset = 0x10;
    /// <summary>u64 offset of ring 0's data (creator to acceptor).</summary>
    public const int Ring0Offset = 0x18;
    /// <summary>u64 offset of ring 1's data (acceptor to creator).</summary>
    public const int Ring1Offset = 0x20;
    /// <summary>u64 devid of the creator (the device that ALLOCated).</summary>
    public const int CreatorDevIdOffset = 0x28;
    /// <summary>u64 devid the creator expects to accept (0: any).</summary>
    public const int ExpectedPeerOffset = 0x30;
    /// <summary>u64 devid of the acceptor, written when it attaches.</summary>
    public const int AcceptorDevIdOffset = 0x38;

    /// <summary>The creator's side block (64 bytes, written only by the creator).</summary>
    public const int CreatorSide = 0x40;
    /// <summary>The acceptor's side block (64 bytes, written only by the acceptor).</summary>
    public const int AcceptorSide = 0x80;
    /// <summary>u32 state in a side block: <see cref="ChannelState"/>.</summary>
    public const int SideState = 0x00;
    /// <summary>u32 heartbeat interval of that side, in milliseconds.</summary>
    public const int SideHeartbeatInterval = 0x04;
    /// <summary>u64 heartbeat counter of that side (incremented every interval while it lives).</summary>
    public const int SideHeartbeat = 0x08;

    /// <summary>Ring 0's producer line (tail; the producer's wait sequence is <see cref="LineWaitSeq"/> further), written by the creator.</summary>
    public const int Ring0Producer = 0x100;
    /// <summary>Ring 0's consumer line (head; the consumer's wait sequence is <see cref="LineWaitSeq"/> further), written by the acceptor.</summary>
    public const int Ring0Consumer = 0x140;
    /// <summary>Ring 1's producer line, written by the acceptor.</summary>
    public const int Ring1Producer = 0x180;
    /// <summary>Ring 1's consumer line, written by the creator.</summary>
    public const int Ring1Consumer = 0x1C0;
    /// <summary>u64 cursor in a producer line (tail) or consumer line (head): bytes ever written / read.</summary>
    public const int LineCursor = 0x00;
    /// <summary>u32 wait sequence of a line, this many bytes after the line's cursor (so in the
    /// header's 0x200-0x2FF block): bumped by the line's writer each time it is about to block. Not
    /// beside the cursor: the peer reads it after every publish, and a read of the line the
    /// cursor's writer stores into at every message would move that line between the cores each time.</summary>
    public const int LineWaitSeq = 0x100;

    /// <summary>The ring size for a region of <paramref name="regionSize"/> bytes: half of what follows
    /// the header, rounded down to 64 bytes.</summary>
    /// <param name="regionSize">The region's size.</param>
    /// <returns>Bytes per ring.</returns>
    /// <exception cref="ArgumentOutOfRangeException">When the region is smaller than <see cref="MinRegionSize"/>.</exception>
    public static ulong RingSize(ulong regionSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(regionSize, MinRegionSize);
        return (regionSize - HeaderSize) / 2 / 64 * 64;
    }

    /// <summary>Writes a creator's header into <paramref name="header"/> (the first <see cref="HeaderSize"/>
    /// bytes of a zeroed region), everything but the magic, which the creator stores last.</summary>
    internal static void WriteHeader(Span<byte> header, ulong regionSize, ulong creatorDevId, ulong expectedPeer)
    {
        ulong ring = RingSize(regionSize);
        BinaryPrimitives.WriteUInt32LittleEndian(header[VersionOffset..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(header[HeaderSizeOffset..], HeaderSize);
        BinaryPrimitives.WriteUInt64LittleEndian(header[RingSizeOffset..], ring);
        BinaryPrimitives.WriteUInt64LittleEndian(header[Ring0Offset..], HeaderSize);
        BinaryPrimitives.WriteUInt64LittleEndian(header[Ring1Offset..], HeaderSize + ring);
        BinaryPrimitives.WriteUInt64LittleEndian(header[CreatorDevIdOffset..], creatorDevId);
        BinaryPrimitives.WriteUInt64LittleEndian(header[ExpectedPeerOffset..], expectedPeer);
    }

    /// <summary>Checks a header an acceptor found in the region it attached: magic, version and that
    /// both rings lie inside the <paramref name="regionSize"/> bytes it can see.</summary>
    /// <returns>The ring size and both ring offsets.</returns>
    /// <exception cref="ChannelException">When the region holds no valid channel.</exception>
    internal static (ulong RingSize, ulong Ring0, ulong Ring1) ValidateHeader(ReadOnlySpan<byte> header, ulong regionSize)
    {
        ulong magic = BinaryPrimitives.ReadUInt64LittleEndian(header[MagicOffset..]);
        if (magic != Magic)
            throw new ChannelException($"the region holds no vism channel (magic 0x{magic:x16}, expected 0x{Magic:x16})");
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(header[VersionOffset..]);
        if (version != Version)
            throw new ChannelException($"the channel speaks protocol version {version}; this library speaks {Version}");
        uint headerSize = BinaryPrimitives.ReadUInt32LittleEndian(header[HeaderSizeOffset..]);
        ulong ring = BinaryPrimitives.ReadUInt64LittleEndian(header[RingSizeOffset..]);
        ulong ring0 = BinaryPrimitives.ReadUInt64LittleEndian(header[Ring0Offset..]);
        ulong ring1 = BinaryPrimitives.ReadUInt64LittleEndian(header[Ring1Offset..]);
        if (headerSize != HeaderSize || ring < 64 || ring % 64 != 0 || ring > regionSize
            || ring0 < HeaderSize || ring0 > regionSize - ring || ring1 < HeaderSize || ring1 > regionSize - ring
            || (ring0 < ring1 ? ring1 - ring0 : ring0 - ring1) < ring)
            throw new ChannelException($"the channel header is inconsistent (header {headerSize} bytes, rings of {ring} bytes at 0x{ring0:x} and 0x{ring1:x}, region {regionSize} bytes)");
        return (ring, ring0, ring1);
    }
}

/// <summary>A side's state word (docs/channel.md, "States").</summary>
public enum ChannelState : uint
{
    /// <summary>The side has not joined yet (the acceptor before ATTACH).</summary>
    None = 0,

    /// <summary>The side reads and writes.</summary>
    Open = 1,

    /// <summary>The side has written its last byte (everything before the change is in its ring) and reads no more.</summary>
    Closed = 2,
}

/// <summary>A channel failed: the region holds no valid channel, the peer broke the protocol, or a
/// control request was refused.</summary>
public class ChannelException(string message, Exception? inner = null) : IOException(message, inner);

/// <summary>The peer stopped: its heartbeat did not move within the peer timeout (it was killed,
/// its VMM died, or it detached without closing).</summary>
public sealed class ChannelPeerLostException(string message) : ChannelException(message);
