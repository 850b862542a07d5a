using Microsoft.Extensions.Logging.Abstractions;
using Mono.Unix.Native;
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
/// <see cref="SocketFeed"/>; descriptors are eventfds), shuts its sending side and reads every
/// reply until the device closes the connection. Rules: the device answers and closes (no hang),
/// nothing escapes to the loop, no internal failure, every reply is a well-formed frame, and
/// the decoders of src/Framework/Mmio keep their contract on every message of the stream.
/// </summary>
internal sealed class MmioTarget : IFuzzTarget
{
    private readonly Rig _rig = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("vism-fuzz-mmio").FullName;
    private readonly MmioTransport _transport;
    private readonly EventFd _eventFd = EventFd.Create();

    public MmioTarget()
    {
        IsmDevice device = _rig.AddDevice("fuzz-mmio");
        var host = new HostDescription { Gid = _rig.Host.Gid, StateDirectory = _dir, SocketDirectory = _dir };
        _transport = new MmioTransport(new MmioOptions { Vectors = 4 }, device.Description, host, device.Loop,
            new DeviceCounters(), NullLogger<MmioTransport>.Instance);
        device.Loop.InvokeAsync(() => _transport.Start(device)).GetAwaiter().GetResult();
    }

    public void Run(ReadOnlySpan<byte> input)
    {
        if (input.Length < 2) return;
        DecodeStream(input[2..]);
        using (UnixSocket vmm = UnixSocket.Connect(_transport.Endpoint))
        {
            vmm.Send(MmioFrame.Build(MmioMessageType.Hello, MmioMessageFlags.None, 0, new HelloRequest(MmioProtocol.Magic, MmioProtocol.Version).Encode()));
            (MmioHeader Header, byte[] Payload)? hello = MmioFrame.Receive(vmm, null)
                ?? throw new FuzzFinding("the device closed the connection before answering HELLO");
            if (hello.Value.Header.Status != MmioStatus.Ok) throw new FuzzFinding($"HELLO answered {hello.Value.Header.Status}");
            Play(vmm, input);
            // Every reply up to the device's close must be a well-formed frame.
            var fds = new List<Microsoft.Win32.SafeHandles.SafeFileHandle>();
            try
            {
                while (MmioFrame.Receive(vmm, fds) is { } frame)
                {
                    MmioHeader h = frame.Header;
                    if (h.Type is not (MmioMessageType.Reject or MmioMessageType.Map or MmioMessageType.Unmap) && !h.IsReply)
                        throw new FuzzFinding($"the device sent a {h.Type} request");
                    if (h.Type == MmioMessageType.Reject && !RejectMessage.TryDecode(frame.Payload, out _))
                        throw new FuzzFinding("the device sent a malformed REJECT");
                }
            }
            catch (Exception ex) when (ex is InvalidDataException or EndOfStreamException)
            {
                throw new FuzzFinding($"the device broke its own framing: {ex.Message}", ex);
            }
            catch (PosixException ex) when (ex.Errno == Errno.ECONNRESET)
            {
                // The device closed the connection with some of the stream unread (it refused the VMM).
            }
            finally
            {
                foreach (var fd in fds) fd.Dispose();
            }
        }
        // The next VMM must be served: wait until this connection is gone on the device's side.
        long deadline = Environment.TickCount64 + 30_000;
        while (_transport.HasVmm)
        {
            if (Environment.TickCount64 > deadline) throw new FuzzFinding("the device kept a closed VMM connection");
            Thread.Sleep(0);
        }
        _rig.Settle();
        _rig.Check();
    }

    /// <summary>Sends the input's stream in its chunks (eventfds on the chunks fdMask names), then
    /// shuts the sending side: the device reads to the end and closes.</summary>
    private void Play(UnixSocket vmm, ReadOnlySpan<byte> input)
    {
        int chunk = input[0] == 0 ? SocketFeed.MaxStream : input[0];
        byte fdMask = input[1];
        ReadOnlySpan<byte> stream = input[2..];
        if (stream.Length > SocketFeed.MaxStream) stream = stream[..SocketFeed.MaxStream];
        try
        {
            for (int i = 0, at = 0; at < stream.Length; i++)
            {
                int length = SocketFeed.Length(i, chunk, stream.Length - at);
                ReadOnlySpan<byte> piece = stream.Slice(at, length);
                at += length;
                if (i < 8 && (fdMask & (1 << i)) != 0) vmm.Send(piece, [_eventFd.Handle]);
                else vmm.Send(piece);
            }
        }
        catch (PosixException)
        {
            // The device refused the VMM and closed the connection: allowed.
        }
        Syscall.shutdown(Fd.Raw(vmm.Handle), ShutdownOption.SHUT_WR);
    }

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

    public void Dispose()
    {
        _transport.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _eventFd.Dispose();
        _rig.Dispose();
        Directory.Delete(_dir, recursive: true);
    }
}
