using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Mmio;

/// <summary>Fixed numbers of the vism MMIO socket protocol (docs/mmio-protocol.md).</summary>
public static class MmioProtocol
{
    /// <summary>First field of HELLO and its reply: "VMIO" little endian. Tells a vism MMIO peer
    /// from anything else that might connect (a vhost-user frontend, a stray client).</summary>
    public const uint Magic = 0x4f494d56;

    /// <summary>The protocol version this build speaks. Peers of another version are refused.</summary>
    public const uint Version = 1;

    /// <summary>Largest payload of any message; a larger size field ends the connection.</summary>
    public const int MaxPayload = 4096;

    /// <summary>Most regions in one SET_MEM_TABLE (one descriptor each; the SCM_RIGHTS limit of vism).</summary>
    public const int MaxMemoryRegions = 8;

    /// <summary>Most shared-memory windows listed in a HELLO reply.</summary>
    public const int MaxSharedMemoryWindows = 8;

    /// <summary>Granularity of guest memory ranges and of window mappings.</summary>
    public const ulong PageSize = TransportRules.PageSize;

    /// <summary>Interrupt line 0 of SET_IRQ_FD: the device's standard virtio-mmio interrupt.</summary>
    public const uint StandardIrqLine = 0;
}

/// <summary>Message types. 1-15 travel from the VMM to the device, 16-31 from the device to the VMM.</summary>
public enum MmioMessageType : ushort
{
    /// <summary>VMM to device: version handshake; must come first. Reply: <see cref="HelloReply"/>.</summary>
    Hello = 1,

    /// <summary>VMM to device: the guest RAM layout, one descriptor per region. Replaces the previous table.</summary>
    SetMemTable = 2,

    /// <summary>VMM to device: the eventfd of one interrupt line (0 = the standard line, 1 + v = per-region vector v); no descriptor disconnects the line.</summary>
    SetIrqFd = 3,

    /// <summary>VMM to device: where a shared-memory window sits in guest-physical space (SHMBase).</summary>
    SetShmBase = 4,

    /// <summary>VMM to device: a trapped register read. Reply: <see cref="ReadReply"/>.</summary>
    Read = 5,

    /// <summary>VMM to device: a trapped register write. Replied only with <see cref="MmioMessageFlags.NeedReply"/>.</summary>
    Write = 6,

    /// <summary>VMM to device: a trapped write into the NOTIFY window. Replied only with <see cref="MmioMessageFlags.NeedReply"/>.</summary>
    Notify = 7,

    /// <summary>VMM to device: wires a NOTIFY-window offset to a doorbell eventfd the VMM signals instead of
    /// sending <see cref="Notify"/> (as KVM's ioeventfd); no descriptor unwires it. Always replied.</summary>
    SetNotifyFd = 8,

    /// <summary>VMM to device: wires one virtqueue's used-buffer notifications to a call eventfd the device
    /// signals instead of setting InterruptStatus bit 0 and firing the standard line (as vhost-user's
    /// SET_VRING_CALL); no descriptor unwires it. Always replied.</summary>
    SetQueueCallFd = 9,

    /// <summary>Device to VMM: map a region descriptor into a shared-memory window. One descriptor. Always replied.</summary>
    Map = 16,

    /// <summary>Device to VMM: remove a mapping made by <see cref="Map"/>. Always replied.</summary>
    Unmap = 17,

    /// <summary>Device to VMM: the device refuses the connection and closes it (reason text follows). Not replied.</summary>
    Reject = 18,
}

/// <summary>Header flags.</summary>
[Flags]
public enum MmioMessageFlags : ushort
{
    /// <summary>A request.</summary>
    None = 0,

    /// <summary>This message answers the request with the same id that travelled the other way.</summary>
    Reply = 1,

    /// <summary>The sender wants a reply to a request that is not replied by default (WRITE, NOTIFY).</summary>
    NeedReply = 2,
}

/// <summary>The status field of a reply (0 in requests).</summary>
public enum MmioStatus : uint
{
    /// <summary>Done.</summary>
    Ok = 0,

    /// <summary>The payload has the wrong size or a field is malformed.</summary>
    BadMessage = 1,

    /// <summary>The receiver does not know the message type.</summary>
    UnknownType = 2,

    /// <summary>HELLO with another magic or version; the reply carries the device's own.</summary>
    VersionMismatch = 3,

    /// <summary>Any message other than HELLO before the handshake, or a second HELLO.</summary>
    HandshakeRequired = 4,

    /// <summary>The register window answered the access as invalid (undefined offset, wrong width or
    /// direction, refused write); a READ reply still carries the value the guest sees (0).</summary>
    BadAccess = 5,

    /// <summary>SET_MEM_TABLE refused: ranges overlap, wrap, are unaligned, exceed the file, or cannot be mapped.</summary>
    BadMemory = 6,

    /// <summary>Descriptors missing, or present on a message that takes none (they are closed).</summary>
    BadFd = 7,

    /// <summary>An index or range outside what the device has (interrupt line, shared-memory id, window).</summary>
    BadRange = 8,

    /// <summary>Another VMM is connected to the device.</summary>
    Busy = 9,

    /// <summary>The operation failed on the receiver's side (for example mmap in the VMM).</summary>
    Failed = 10,
}

/// <summary>The 16-byte message header: <c>u16 type, u16 flags, u32 id, u32 size, u32 status</c>, little endian.</summary>
/// <param name="Type">The message type.</param>
/// <param name="Flags">Reply / need-reply flags.</param>
/// <param name="Id">Chosen by the sender of a request; a reply repeats it.</param>
/// <param name="Size">Payload bytes after the header (at most <see cref="MmioProtocol.MaxPayload"/>).</param>
/// <param name="Status">In a reply, the outcome; 0 in a request.</param>
public readonly record struct MmioHeader(MmioMessageType Type, MmioMessageFlags Flags, uint Id, uint Size, MmioStatus Status = MmioStatus.Ok)
{
    /// <summary>Encoded length.</summary>
    public const int Length = 16;

    /// <summary>Whether this is a reply.</summary>
    public bool IsReply => (Flags & MmioMessageFlags.Reply) != 0;

    /// <summary>Encodes into the first 16 bytes of <paramref name="destination"/>.</summary>
    /// <param name="destination">At least 16 bytes.</param>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(destination, (ushort)Type);
        BinaryPrimitives.WriteUInt16LittleEndian(destination[2..], (ushort)Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], Id);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], Size);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[12..], (uint)Status);
    }

    /// <summary>Decodes the first 16 bytes of <paramref name="source"/>.</summary>
    /// <param name="source">At least 16 bytes.</param>
    public static MmioHeader Read(ReadOnlySpan<byte> source) => new(
        (MmioMessageType)BinaryPrimitives.ReadUInt16LittleEndian(source),
        (MmioMessageFlags)BinaryPrimitives.ReadUInt16LittleEndian(source[2..]),
        BinaryPrimitives.ReadUInt32LittleEndian(source[4..]),
        BinaryPrimitives.ReadUInt32LittleEndian(source[8..]),
        (MmioStatus)BinaryPrimitives.ReadUInt32LittleEndian(source[12..]));
}

/// <summary>Encodes one whole message (header and payload) into a buffer.</summary>
public static class MmioFrame
{
    /// <summary>Builds a message.</summary>
    /// <param name="type">Message type.</param>
    /// <param name="flags">Flags.</param>
    /// <param name="id">Request id (or the id being answered).</param>
    /// <param name="payload">Payload bytes.</param>
    /// <param name="status">Reply status.</param>
    /// <returns>Header followed by payload.</returns>
    public static byte[] Build(MmioMessageType type, MmioMessageFlags flags, uint id, ReadOnlySpan<byte> payload, MmioStatus status = MmioStatus.Ok)
    {
        if (payload.Length > MmioProtocol.MaxPayload)
            throw new ArgumentOutOfRangeException(nameof(payload), $"payload of {payload.Length} bytes exceeds {MmioProtocol.MaxPayload}");
        var frame = new byte[MmioHeader.Length + payload.Length];
        new MmioHeader(type, flags, id, (uint)payload.Length, status).Write(frame);
        payload.CopyTo(frame.AsSpan(MmioHeader.Length));
        return frame;
    }

    /// <summary>Blocking: receives one whole message from a VMM-side socket (the device side reads
    /// incrementally on its loop instead). Descriptors that arrive with it are added to <paramref name="fds"/>.</summary>
    /// <param name="socket">A blocking socket.</param>
    /// <param name="fds">Receives the message's descriptors; null closes them.</param>
    /// <returns>The message, or null when the peer closed the connection before it.</returns>
    /// <exception cref="InvalidDataException">The header announces more than <see cref="MmioProtocol.MaxPayload"/> bytes.</exception>
    /// <exception cref="EndOfStreamException">The peer closed the connection in the middle of the message.</exception>
    public static (MmioHeader Header, byte[] Payload)? Receive(UnixSocket socket, List<SafeFileHandle>? fds)
    {
        var header = new byte[MmioHeader.Length];
        if (!socket.ReceiveExactly(header, fds)) return null;
        MmioHeader h = MmioHeader.Read(header);
        if (h.Size > MmioProtocol.MaxPayload)
            throw new InvalidDataException($"a {h.Type} message announces {h.Size} payload bytes; the limit is {MmioProtocol.MaxPayload}");
        var payload = new byte[h.Size];
        if (h.Size > 0 && !socket.ReceiveExactly(payload, fds))
            throw new EndOfStreamException("the peer closed the connection in the middle of a message");
        return (h, payload);
    }
}
