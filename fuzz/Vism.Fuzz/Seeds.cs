using System.Buffers.Binary;
using Vism.Abstractions;
using Vism.Mmio;
using Vism.VhostUser;
using R = Vism.Mmio.MmioRegister;

namespace Vism.Fuzz;

/// <summary>
/// Writes the seed corpora (<c>Vism.Fuzz --write-seeds DIR</c>; committed under fuzz/corpus): small
/// well-formed inputs built with the protocol encoders, the way QEMU, a VMM and a driver talk to
/// vism, plus a few known-bad ones the tests already use. Configs are copied from config/ by the script.
/// </summary>
internal static class Seeds
{
    public static void Write(string root)
    {
        Put(root, "vhost-user", VhostUser());
        Put(root, "vhost-user-session", VhostUserSession());
        Put(root, "mmio", Mmio());
        Put(root, "control", Control());
        Put(root, "splitqueue", SplitQueue());
    }

    private static void Put(string root, string target, IEnumerable<(string Name, byte[] Bytes)> seeds)
    {
        string dir = Path.Combine(root, target);
        Directory.CreateDirectory(dir);
        foreach ((string name, byte[] bytes) in seeds) File.WriteAllBytes(Path.Combine(dir, name), bytes);
    }

    private static byte[] Join(byte chunking, byte fdMask, params byte[][] parts) => [chunking, fdMask, .. parts.SelectMany(p => p)];

    // ---- vhost-user: what QEMU sends when it starts a vhost-user-ism device ----------------------

    private static IEnumerable<(string, byte[])> VhostUser()
    {
        static byte[] M(FrontendRequest r, byte[] p, uint flags = VhostUserConstants.Version) => Message.Build((uint)r, flags, p);
        byte[] features = M(FrontendRequest.GetFeatures, []);
        byte[] owner = M(FrontendRequest.SetOwner, []);
        byte[] protocol = M(FrontendRequest.SetProtocolFeatures, U64Payload.ToBytes((1UL << ProtocolFeature.ReplyAck) | (1UL << ProtocolFeature.Config) | (1UL << ProtocolFeature.Shmem)),
            VhostUserConstants.Version | VhostUserConstants.NeedReplyFlag);
        byte[] table = M(FrontendRequest.SetMemTable, MemoryRegionDescriptor.EncodeTable([new(0, 4 << 20, 0x7f00_0000_0000, 0)]));
        byte[] num = M(FrontendRequest.SetVringNum, new VringState(0, 64).ToBytes());
        byte[] addr = M(FrontendRequest.SetVringAddr, new VringAddress(0, 0, 0x7f00_0000_0000, 0x7f00_0000_1000, 0x7f00_0000_0400, 0).ToBytes());
        byte[] vbase = M(FrontendRequest.SetVringBase, new VringState(0, 0).ToBytes());
        byte[] kick = M(FrontendRequest.SetVringKick, U64Payload.ToBytes(0));
        byte[] nofd = M(FrontendRequest.SetVringCall, U64Payload.ToBytes(VhostUserConstants.VringNoFdFlag | 1));
        byte[] getConfig = M(FrontendRequest.GetConfig, new ConfigHeader(0, 32, 0).Encode(new byte[32]));
        byte[] setConfig = M(FrontendRequest.SetConfig, new ConfigHeader(8, 8, 0).Encode(new byte[8]));
        byte[] shmem = M(FrontendRequest.GetShmemConfig, []);
        byte[] addReg = M(FrontendRequest.AddMemReg, new MemoryRegionDescriptor(0x1_0000_0000, 1 << 20, 0x7f10_0000_0000, 0).EncodeSingle());
        byte[] status = M(FrontendRequest.SetStatus, U64Payload.ToBytes(0xf));
        byte[] shmemMap = Message.Build((uint)BackendRequest.ShmemMap, VhostUserConstants.Version,
            new ShmemMapPayload(0, 0, 0x20_0000, 0x10_0000, VhostUserConstants.MapFlagReadWrite).ToBytes());
        byte[] shmemConfig = Message.Build((uint)FrontendRequest.GetShmemConfig, VhostUserConstants.ReplyFlags, ShmemConfig.Encode([16 << 20, 4096]));
        yield return ("startup", Join(0, 0, features, owner, protocol, table, num, addr, vbase, kick, nofd));
        yield return ("startup-chunked-with-fds", Join(13, 0b1010_0101, features, owner, protocol, table, num, addr, vbase, kick));
        yield return ("config-space", Join(0, 0, getConfig, setConfig, shmem, status));
        yield return ("mem-slots", Join(5, 0b11, addReg, M(FrontendRequest.RemMemReg, new MemoryRegionDescriptor(0x1_0000_0000, 1 << 20, 0, 0).EncodeSingle())));
        yield return ("backend-replies", Join(0, 1, shmemMap, shmemConfig));
        yield return ("bad-version", Join(0, 0, Message.Build((uint)FrontendRequest.GetFeatures, 2, [])));
        yield return ("oversized", Join(0, 0, BitConverter.GetBytes(5u), BitConverter.GetBytes(1u), BitConverter.GetBytes(1u << 20)));
        yield return ("truncated", Join(3, 0, table.AsSpan(0, 20).ToArray()));
    }

    /// <summary>QEMU's start of a device: the memory table first (piece 0 carries the memfd), then
    /// the rest in pieces of the same size without descriptors.</summary>
    private static IEnumerable<(string, byte[])> VhostUserSession()
    {
        static byte[] M(FrontendRequest r, byte[] p, uint flags = VhostUserConstants.Version) => Message.Build((uint)r, flags, p);
        byte[] table = M(FrontendRequest.SetMemTable, MemoryRegionDescriptor.EncodeTable([new(0, 1 << 20, 0x7f00_0000_0000, 0)]));
        byte[][] start =
        [
            table, M(FrontendRequest.GetFeatures, []), M(FrontendRequest.SetOwner, []), M(FrontendRequest.GetProtocolFeatures, []),
            M(FrontendRequest.SetProtocolFeatures, U64Payload.ToBytes((1UL << ProtocolFeature.ReplyAck) | (1UL << ProtocolFeature.Config) | (1UL << ProtocolFeature.Mq))),
            M(FrontendRequest.SetFeatures, U64Payload.ToBytes((1UL << 32) | (1UL << VhostUserConstants.ProtocolFeaturesBit))),
            M(FrontendRequest.GetQueueNum, []), M(FrontendRequest.SetVringNum, new VringState(0, 64).ToBytes()),
            M(FrontendRequest.SetVringAddr, new VringAddress(0, 0, 0x7f00_0000_0000, 0x7f00_0000_1000, 0x7f00_0000_0400, 0).ToBytes()),
            M(FrontendRequest.SetVringBase, new VringState(0, 0).ToBytes()),
            M(FrontendRequest.SetVringCall, U64Payload.ToBytes(VhostUserConstants.VringNoFdFlag)),
            M(FrontendRequest.SetVringKick, U64Payload.ToBytes(VhostUserConstants.VringNoFdFlag)),
            M(FrontendRequest.SetVringEnable, new VringState(0, 1).ToBytes(), VhostUserConstants.Version | VhostUserConstants.NeedReplyFlag),
            M(FrontendRequest.GetConfig, new ConfigHeader(0, 32, 0).Encode(new byte[32])),
            M(FrontendRequest.GetVringBase, new VringState(0, 0).ToBytes()),
        ];
        yield return ("start", Join((byte)table.Length, 1, start));
        yield return ("start-whole", Join(0, 0, start[1..]));
        yield return ("config-and-status", Join(0, 0, M(FrontendRequest.GetFeatures, []), M(FrontendRequest.SetConfig, new ConfigHeader(0, 8, 0).Encode(new byte[8])),
            M(FrontendRequest.SetStatus, U64Payload.ToBytes(0xf)), M(FrontendRequest.GetStatus, []), M(FrontendRequest.GetShmemConfig, []),
            M(FrontendRequest.GetMaxMemSlots, []), M(FrontendRequest.ResetDevice, [])));
        yield return ("kick-with-eventfd", Join(20, 0b10, M(FrontendRequest.SetVringNum, new VringState(0, 64).ToBytes()),
            M(FrontendRequest.SetVringKick, U64Payload.ToBytes(0))));
    }

    // ---- MMIO: what a VMM forwards while Linux probes and starts the device --------------------------

    private static IEnumerable<(string, byte[])> Mmio()
    {
        uint id = 1;
        byte[] M(MmioMessageType t, byte[] p, MmioMessageFlags f = MmioMessageFlags.None) => MmioFrame.Build(t, f, id++, p);
        byte[] Read(uint offset, uint width = 4) => M(MmioMessageType.Read, new RegisterAccess(offset, width, 0).Encode());
        byte[] Write(uint offset, ulong value, uint width = 4) => M(MmioMessageType.Write, new RegisterAccess(offset, width, value).Encode(), MmioMessageFlags.NeedReply);
        byte[][] probe =
        [
            Read(R.MagicValue), Read(R.Version), Read(R.DeviceId), Write(R.Status, 0), Write(R.Status, 1), Write(R.Status, 3),
            Write(R.DeviceFeaturesSel, 1), Read(R.DeviceFeatures), Write(R.DriverFeaturesSel, 1), Write(R.DriverFeatures, 1),
            Write(R.Status, 11), Read(R.Status), Write(R.QueueSel, 0), Read(R.QueueNumMax), Write(R.QueueNum, 64),
            Write(R.QueueReady, 1), Write(R.Status, 15), Read(0x100, 8), Read(R.InterruptStatus),
        ];
        yield return ("probe", Join(0, 0, probe));
        yield return ("probe-chunked", Join(7, 0, probe));
        yield return ("irq-fds", Join(24, 0b101, M(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode()), M(MmioMessageType.SetIrqFd, new SetIrqFd(2).Encode()),
            M(MmioMessageType.SetIrqFd, new SetIrqFd(1).Encode())));
        yield return ("shm-notify", Join(0, 0, M(MmioMessageType.SetShmBase, new SetShmBase(ShmId.Regions, 0x1_0000_0000).Encode()),
            M(MmioMessageType.Notify, new NotifyWrite(0, 1, 1).Encode(), MmioMessageFlags.NeedReply)));
        yield return ("mem-table-without-fd", Join(0, 0, M(MmioMessageType.SetMemTable, SetMemTable.Encode([new MemoryRegion(0, 1 << 20, 0)]))));
        yield return ("stray-reply", Join(0, 0, MmioFrame.Build(MmioMessageType.Map, MmioMessageFlags.Reply, 77, []), M(MmioMessageType.Hello, new HelloRequest(MmioProtocol.Magic, 1).Encode())));
        yield return ("undefined-read-flags", Join(0, 0, MmioFrame.Build(MmioMessageType.Read, (MmioMessageFlags)0xfffc, 9, new RegisterAccess(0, 4, 0).Encode())));
        yield return ("oversized", Join(0, 0, new MmioHeader(MmioMessageType.Write, 0, 1, 1 << 20).ToBytes()));
        yield return ("notify-doorbells", Join(24, 0b00111, M(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode()),
            M(MmioMessageType.SetNotifyFd, new SetNotifyFd(0).Encode()), M(MmioMessageType.SetNotifyFd, new SetNotifyFd(1 << 20).Encode()),
            M(MmioMessageType.SetNotifyFd, new SetNotifyFd(0).Encode()), M(MmioMessageType.Notify, new NotifyWrite(0, 1, 1).Encode(), MmioMessageFlags.NeedReply)));
        yield return ("queue-calls", Join(24, 0b01111, M(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode()),
            M(MmioMessageType.SetQueueCallFd, new SetQueueCallFd(0).Encode()), M(MmioMessageType.SetQueueCallFd, new SetQueueCallFd(1).Encode()),
            M(MmioMessageType.SetNotifyFd, new SetNotifyFd(0).Encode()), M(MmioMessageType.SetQueueCallFd, new SetQueueCallFd(1).Encode()),
            M(MmioMessageType.SetQueueCallFd, new SetQueueCallFd(7).Encode())));
    }

    private static byte[] ToBytes(this MmioHeader h)
    {
        var b = new byte[MmioHeader.Length];
        h.Write(b);
        return b;
    }

    // ---- control: what the Linux ism driver sends ----------------------------------------------------

    private static IEnumerable<(string, byte[])> Control()
    {
        static byte[] Req(byte how, byte cls, params ulong[] args)
        {
            var b = new byte[5 + 8 * args.Length];
            b[0] = how;
            b[1] = cls;
            b[3] = (byte)(8 * args.Length);
            b[4] = cls switch { IsmControl.ClassAlloc => 16, IsmControl.ClassAttach => 8, _ => 0 };
            for (int i = 0; i < args.Length; i++) BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(5 + 8 * i), args[i]);
            return b;
        }
        const byte A = 0, B = 1, Token = 2, Offset = 4, Devid = 8;
        yield return ("alloc-detach", [.. Req(A, IsmControl.ClassAlloc, 4096), .. Req(A | Offset, IsmControl.ClassDetach, 0)]);
        yield return ("share", [.. Req(A, IsmControl.ClassAlloc, 65536), .. Req(B | Token, IsmControl.ClassAttach, 0),
            .. Req(A | Offset | Devid, IsmControl.ClassGrant, 0, 0, (ulong)(IsmPermissions.Attach | IsmPermissions.Read)),
            .. Req(B | Offset, IsmControl.ClassEventVector, 0, 1), .. Req(B | Offset, IsmControl.ClassDetach, 0), .. Req(A | Offset, IsmControl.ClassDetach, 0)]);
        yield return ("revoke", [.. Req(A, IsmControl.ClassAlloc, 4096), .. Req(A | Offset | Devid, IsmControl.ClassGrant, 0, 0, 0),
            .. Req(B | Token, IsmControl.ClassAttach, 0)]);
        yield return ("bad-requests", [.. Req(A, 9, 1), .. Req(A, IsmControl.ClassAlloc), .. Req(A, IsmControl.ClassAlloc, 0, 0),
            .. Req(A | 16, IsmControl.ClassAlloc, 4096), .. Req(A, IsmControl.ClassAttach, 0xdead_beef), .. Req(A, IsmControl.ClassAlloc, ulong.MaxValue)]);
    }

    // ---- split queue: rings as a driver lays them out -------------------------------------------

    private static IEnumerable<(string, byte[])> SplitQueue()
    {
        // Queue of 8 (sizeLog2 3) with the descriptor table at 0: avail at 128, used at 148.
        static byte[] Ring(byte features, Action<byte[]> fill)
        {
            var memory = new byte[1024];
            fill(memory);
            return [3, features, 0, 0, 0, 0, .. memory];
        }
        static void Desc(byte[] m, ulong table, int i, ulong addr, uint len, ushort flags, ushort next)
        {
            Span<byte> d = m.AsSpan((int)table + 16 * i, 16);
            BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
            BinaryPrimitives.WriteUInt32LittleEndian(d[8..], len);
            BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
            BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
        }
        static void Avail(byte[] m, params ushort[] heads)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(m.AsSpan(128 + 2), (ushort)heads.Length);
            for (int i = 0; i < heads.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(m.AsSpan(128 + 4 + 2 * i), heads[i]);
        }
        yield return ("request-and-ack", Ring(0, m => { Desc(m, 0, 0, 512, 10, 1, 1); Desc(m, 0, 1, 600, 17, 2, 0); Avail(m, 0); }));
        yield return ("two-chains-event-idx", Ring(1, m => { Desc(m, 0, 0, 512, 10, 1, 1); Desc(m, 0, 1, 600, 17, 2, 0); Desc(m, 0, 2, 640, 8, 2, 0); Avail(m, 0, 2); }));
        yield return ("indirect", Ring(2, m => { Desc(m, 0, 0, 768, 32, 4, 0); Desc(m, 768, 0, 512, 10, 1, 1); Desc(m, 768, 1, 600, 17, 2, 0); Avail(m, 0); }));
        yield return ("indirect-over-queue-size", Ring(2, m => { Desc(m, 0, 0, 768, 16 * 9, 4, 0); Avail(m, 0); }));
        yield return ("loop", Ring(0, m => { Desc(m, 0, 0, 512, 4, 1, 1); Desc(m, 0, 1, 520, 4, 1, 0); Avail(m, 1); }));
        yield return ("across-the-hole", Ring(0, m => { Desc(m, 0, 0, 0x7ff0, 0x20, 0, 0); Avail(m, 0); }));
    }
}
