using Microsoft.Extensions.Logging.Abstractions;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Core;
using Vism.Mmio;
using Vism.Native;
using Vism.Transport.Mmio;

namespace Vism.Fuzz;

/// <summary>
/// The MMIO socket protocol, device side: Core's ISM device behind the real <see cref="MmioTransport"/>
/// on a real loop and Unix socket. Each input is one VMM connection: the target sends a valid HELLO
/// (so the fuzzer need not find the magic), then plays the input as the VMM's byte stream (see
/// <see cref="SocketFeed"/>; descriptors are two eventfds, by the piece's parity), shuts its sending side and reads every
/// reply until the device closes the connection. Rules: the device answers and closes (no hang),
/// nothing escapes to the loop, no internal failure, every reply is a well-formed frame, and
/// the decoders of src/Framework/Mmio keep their contract on every message of the stream.
/// </summary>
internal sealed class MmioTarget : DeviceSocketTarget
{
    private readonly MmioTransport _transport;
    private readonly EventFd _eventFd = EventFd.Create();
    private readonly EventFd _otherEventFd = EventFd.Create();

    public MmioTarget()
        : base("fuzz-mmio")
    {
        _transport = new MmioTransport(new MmioOptions { Vectors = 4 }, Device.Description, Host, Device.Loop,
            new DeviceCounters(), NullLogger<MmioTransport>.Instance);
        Start(_transport);
    }

    protected override string Endpoint => _transport.Endpoint;

    protected override bool Connected => _transport.HasVmm;

    /// <summary>Two eventfds, by the piece's parity: the same one as an interrupt line and a
    /// doorbell is refused, different ones are wired.</summary>
    protected override SafeHandle Descriptor(int piece) => piece % 2 == 0 ? _eventFd.Handle : _otherEventFd.Handle;

    protected override void Greet(UnixSocket vmm)
    {
        vmm.Send(MmioFrame.Build(MmioMessageType.Hello, MmioMessageFlags.None, 0, new HelloRequest(MmioProtocol.Magic, MmioProtocol.Version).Encode()));
        (MmioHeader Header, byte[] Payload)? hello = MmioFrame.Receive(vmm, null)
            ?? throw new FuzzFinding("the device closed the connection before answering HELLO");
        if (hello.Value.Header.Status != MmioStatus.Ok) throw new FuzzFinding($"HELLO answered {hello.Value.Header.Status}");
    }

    /// <summary>Every reply up to the device's close must be a well-formed frame.</summary>
    protected override void Drain(UnixSocket vmm)
    {
        var fds = new List<SafeFileHandle>();
        try
        {
            while (MmioFrame.Receive(vmm, fds) is { } frame)
            {
                MmioHeader h = frame.Header;
                if (h.Type is not (MmioMessageType.Reject or MmioMessageType.Map or MmioMessageType.Unmap) && !h.IsReply)
                    throw new FuzzFinding($"the device sent a {h.Type} request");
                if (h.Type == MmioMessageType.Reject && !h.IsReply && !RejectMessage.TryDecode(frame.Payload, out _))
                    throw new FuzzFinding($"the device sent a malformed REJECT: {h}, payload {Convert.ToHexString(frame.Payload)}");
            }
        }
        catch (Exception ex) when (ex is InvalidDataException or EndOfStreamException)
        {
            throw new FuzzFinding($"the device broke its own framing: {ex.Message}", ex);
        }
        finally
        {
            foreach (SafeFileHandle fd in fds) fd.Dispose();
        }
    }

    protected override void Inspect(ReadOnlySpan<byte> stream) => DecodeStream(stream);

    /// <summary>Walks the frames of the stream and runs every decoder on each payload.</summary>
    private static void DecodeStream(ReadOnlySpan<byte> s)
    {
        while (s.Length >= MmioHeader.Length)
        {
            MmioHeader h = MmioHeader.Read(s);
            if (h.Size > MmioProtocol.MaxPayload) return;
            int size = (int)Math.Min(h.Size, (uint)(s.Length - MmioHeader.Length));
            ReadOnlySpan<byte> p = s.Slice(MmioHeader.Length, size);
            Decoders(p);
            s = s[(MmioHeader.Length + size)..];
        }
    }

    private static void Decoders(ReadOnlySpan<byte> p)
    {
        if (HelloRequest.TryDecode(p, out HelloRequest hello)) Twice(hello.Encode(), hello, HelloRequest.TryDecode);
        if (SetIrqFd.TryDecode(p, out SetIrqFd irq)) Twice(irq.Encode(), irq, SetIrqFd.TryDecode);
        if (SetShmBase.TryDecode(p, out SetShmBase shm)) Twice(shm.Encode(), shm, SetShmBase.TryDecode);
        if (SetNotifyFd.TryDecode(p, out SetNotifyFd bell)) Twice(bell.Encode(), bell, SetNotifyFd.TryDecode);
        if (SetQueueCallFd.TryDecode(p, out SetQueueCallFd call)) Twice(call.Encode(), call, SetQueueCallFd.TryDecode);
        if (RegisterAccess.TryDecode(p, out RegisterAccess access)) Twice(access.Encode(), access, RegisterAccess.TryDecode);
        if (NotifyWrite.TryDecode(p, out NotifyWrite notify)) Twice(notify.Encode(), notify, NotifyWrite.TryDecode);
        if (WindowMapping.TryDecode(p, out WindowMapping map)) Twice(map.Encode(), map, WindowMapping.TryDecode);
        if (ReadReply.TryDecode(p, out ulong value) && (!ReadReply.TryDecode(ReadReply.Encode(value), out ulong v2) || v2 != value))
            throw new FuzzFinding("READ reply does not survive a round trip");
        if (SetMemTable.TryDecode(p, out MemoryRegion[] regions))
        {
            if (regions.Length is 0 or > MmioProtocol.MaxMemoryRegions) throw new FuzzFinding($"a table of {regions.Length} regions");
            if (!SetMemTable.TryDecode(SetMemTable.Encode(regions), out MemoryRegion[] again) || !again.AsSpan().SequenceEqual(regions))
                throw new FuzzFinding("SET_MEM_TABLE does not survive a round trip");
        }
        if (HelloReply.TryDecode(p, out HelloReply? reply))
        {
            if (!HelloReply.TryDecode(reply!.Encode(), out HelloReply? again) || !again!.SharedMemory.SequenceEqual(reply.SharedMemory)
                || again with { SharedMemory = reply.SharedMemory } != reply)
                throw new FuzzFinding("HELLO reply does not survive a round trip");
        }
        if (RejectMessage.TryDecode(p, out RejectMessage reject))
        {
            if (!RejectMessage.TryDecode(reject.Encode(), out RejectMessage again) || again.Status != reject.Status)
                throw new FuzzFinding("REJECT does not survive a round trip");
        }
    }

    private delegate bool Decoder<T>(ReadOnlySpan<byte> p, out T value);

    private static void Twice<T>(byte[] encoded, T value, Decoder<T> decode) where T : struct
    {
        if (!decode(encoded, out T again) || !EqualityComparer<T>.Default.Equals(again, value))
            throw new FuzzFinding($"{typeof(T).Name} does not survive a round trip");
    }

    protected override void DisposeTransport()
    {
        _transport.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _eventFd.Dispose();
        _otherEventFd.Dispose();
    }
}
