using Vism.Abstractions;
using Vism.Conformance.Composition;
using Vism.Driver;

namespace Vism.Conformance.Checks;

/// <summary>ALLOC: tokens, offsets, the ERR cases, cleared memory.</summary>
internal static class AllocChecks
{
    private const string Section = "Alloc ISM Region, device normative";

    public static IEnumerable<ConformanceCheck> All =>
    [
        new("alloc.token-offset",
            "ALLOC answers OK with a new non-zero token and the region's offset; the token reaches that memory",
            Statement.V1(Section, "The device sets ack to VIRTIO_ISM_OK after successfully assigning the physical ism region. At the same time, a new token MUST be dynamically created for this ism region. offset is the location of this ism region in shared memory."),
            TokenAndOffset),
        new("alloc.too-large",
            "ALLOC of more than region_size is ERR; exactly region_size is OK",
            Statement.V1(Section, "If size is greater than region_size, the device MUST set ack to VIRTIO_ISM_ERR."),
            TooLarge),
        new("alloc.small-occupies-region",
            "regions smaller than region_size still take a whole region_size slot each",
            Statement.V1(Section, "If size is smaller than region_size, the ism region also occupies region_size in the shared memory space."),
            SmallOccupiesRegion),
        new("alloc.no-free-area",
            "ALLOC fills every slot of the REGIONS window, then is ERR until a region is detached",
            Statement.V1(Section, "If there is no free area of the shared memory space, the device MUST set ack to VIRTIO_ISM_ERR."),
            NoFreeArea),
        new("alloc.no-memory",
            "with memory for two regions, the third ALLOC is ERR (not a SIGBUS later) until one is detached",
            Statement.V1(Section, "If new physical memory cannot be allocated, the device MUST set ack to VIRTIO_ISM_ERR."),
            NoMemory),
        new("reply.layout",
            "ALLOC, ATTACH and DETACH sent as raw bytes (class and command numbers, le64 fields at the offsets the v1 structs give) are answered with ack 0 at byte 0 and le64 token, offset at bytes 1 and 9 of the writable part; ERR is ack 1",
            Statement.V1("Control Virtqueue", "struct virtio_ism_ctrl { u8 class; u8 command; u8 command_specific_data[]; u8 ack; u8 command_specific_data_reply[]; }; #define VIRTIO_ISM_OK 0; struct virtio_ism_ctrl_alloc_reply { le64 token; le64 offset; }; #define VIRTIO_ISM_CTRL_ALLOC 0; #define VIRTIO_ISM_CTRL_ATTACH 1; #define VIRTIO_ISM_CTRL_DETACH 2"),
            ReplyLayout),
        new("alloc.cleared",
            "every new region reads as zeros, also where a freed region was written before",
            Statement.V1(Section, "The device MUST clear the new ism region before committing to the guest."),
            Cleared),
    ];

    private static void TokenAndOffset(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ulong regionSize = rig.A.Client.RegionSize;
        ulong window = rig.A.Client.Transport.ShmLength(ShmId.Regions);
        var tokens = new HashSet<ulong>();
        var offsets = new HashSet<ulong>();
        for (int i = 0; i < 3; i++)
        {
            (ulong token, ulong offset) = rig.A.Alloc();
            ctx.Expect(token != 0, "ALLOC answered token 0");
            ctx.Expect(tokens.Add(token), $"ALLOC answered token 0x{token:x16} twice");
            ctx.Expect(offset % regionSize == 0, $"ALLOC answered offset 0x{offset:x}, not a multiple of region_size {regionSize}");
            ctx.Expect(offset <= window - regionSize, $"ALLOC answered offset 0x{offset:x}; the region would end beyond the {window}-byte REGIONS window");
            ctx.Expect(offsets.Add(offset), $"ALLOC answered offset 0x{offset:x} for two live regions");
            byte[] mark = Patterns.Mark("a", i);
            rig.A.Write(offset, mark);
            ctx.Expect(rig.A.Read(offset, mark.Length).AsSpan().SequenceEqual(mark), $"the region at 0x{offset:x} does not read back what device a wrote");
            ulong peerOffset = rig.B.Attach(token);
            ctx.Expect(rig.B.Read(peerOffset, mark.Length).AsSpan().SequenceEqual(mark),
                $"device b attached token 0x{token:x16} but does not see what device a wrote at 0x{offset:x}: the offset is not the token's region");
        }
    }

    /// <summary>Little-endian bytes of <paramref name="value"/>, written out here (not with the
    /// codec the device shares) so that the check reads the wire as the v1 text defines it.</summary>
    private static byte[] Le64(ulong value)
    {
        var b = new byte[8];
        for (int i = 0; i < 8; i++)
            b[i] = (byte)(value >> (8 * i));
        return b;
    }

    private static ulong Le64(byte[] bytes, int at)
    {
        ulong v = 0;
        for (int i = 7; i >= 0; i--)
            v = (v << 8) | bytes[at + i];
        return v;
    }

    private static void ReplyLayout(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        IsmClient a = rig.A.Client, b = rig.B.Client;
        ulong regionSize = a.RegionSize;
        // ALLOC: class 0, command 0, le64 size; reply ack, le64 token, le64 offset.
        ControlResult alloc = a.Send(0, 0, Le64(regionSize), 16);
        ctx.Expect(alloc.Written >= 1 + 16, $"ALLOC wrote {alloc.Written} bytes, not the ack and the 16-byte virtio_ism_ctrl_alloc_reply");
        ctx.Expect(alloc.Ack == 0, $"ALLOC answered ack {alloc.Ack}, not VIRTIO_ISM_OK (0)");
        ulong token = Le64(alloc.Reply, 0), offset = Le64(alloc.Reply, 8);
        ctx.Expect(token != 0, "ALLOC's reply holds token 0 at bytes 1..8");
        ctx.Expect(offset % regionSize == 0 && offset <= a.Transport.ShmLength(ShmId.Regions) - regionSize,
            $"ALLOC's reply holds offset 0x{offset:x} at bytes 9..16: not a region_size slot of the REGIONS window");
        byte[] mark = Patterns.Mark("raw", 1);
        rig.A.Write(offset, mark);
        // ATTACH: class 1, command 0, le64 token; reply ack, le64 offset.
        ControlResult attach = b.Send(1, 0, Le64(token), 8);
        ctx.Expect(attach.Written >= 1 + 8 && attach.Ack == 0, $"ATTACH of the token at bytes 1..8 of ALLOC's reply answered ack {attach.Ack} ({attach.Written} bytes written)");
        ulong peerOffset = Le64(attach.Reply, 0);
        ctx.Expect(rig.B.Read(peerOffset, mark.Length).AsSpan().SequenceEqual(mark),
            $"ATTACH's reply holds offset 0x{peerOffset:x} at bytes 1..8, and device b does not see device a's bytes there");
        // DETACH: class 2, command 0, le64 offset; ack only.
        ControlResult detach = b.Send(2, 0, Le64(peerOffset), 0);
        ctx.Expect(detach.Written >= 1 && detach.Ack == 0, $"DETACH of offset 0x{peerOffset:x} answered ack {detach.Ack} ({detach.Written} bytes written)");
        // ERR is 1 (the text names it VIRTIO_NET_ERR): ALLOC of region_size + 1.
        ControlResult err = a.Send(0, 0, Le64(regionSize + 1), 16);
        ctx.Expect(err.Written >= 1 && err.Ack == 1, $"ALLOC of region_size + 1 answered ack {err.Ack}, not ERR (1)");
    }

    private static void TooLarge(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        ulong regionSize = rig.A.Client.RegionSize;
        rig.A.ExpectErr(rig.A.Client.Alloc(regionSize + 1).Ack, $"ALLOC of region_size + 1 = {regionSize + 1} bytes");
        rig.A.ExpectErr(rig.A.Client.Alloc(ulong.MaxValue).Ack, "ALLOC of 2^64 - 1 bytes");
        rig.A.Alloc(regionSize);
    }

    private static void SmallOccupiesRegion(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        ulong regionSize = rig.A.Client.RegionSize;
        ulong[] offsets = [rig.A.Alloc(1).Offset, rig.A.Alloc(4096).Offset, rig.A.Alloc(regionSize / 2).Offset, rig.A.Alloc(regionSize).Offset];
        for (int i = 0; i < offsets.Length; i++)
            for (int j = i + 1; j < offsets.Length; j++)
            {
                ulong distance = offsets[i] > offsets[j] ? offsets[i] - offsets[j] : offsets[j] - offsets[i];
                ctx.Expect(distance >= regionSize,
                    $"regions at 0x{offsets[i]:x} and 0x{offsets[j]:x} are {distance} bytes apart, less than region_size {regionSize}");
            }
    }

    /// <summary>Allocates until ERR; returns the offsets allocated. Fails if more than <paramref name="limit"/> succeed.</summary>
    internal static List<ulong> Fill(CheckContext ctx, Peer peer, int limit)
    {
        var offsets = new List<ulong>();
        while (true)
        {
            AllocReply r = peer.Client.Alloc(peer.Client.RegionSize);
            if (!r.Ok)
            {
                peer.ExpectErr(r.Ack, $"ALLOC number {offsets.Count + 1}");
                return offsets;
            }
            offsets.Add(r.Offset);
            ctx.Expect(offsets.Count <= limit, $"device {peer.Name}: ALLOC succeeded {offsets.Count} times; the REGIONS window holds only {limit} regions");
        }
    }

    private static void NoFreeArea(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        IsmClient c = rig.A.Client;
        int slots = (int)(c.Transport.ShmLength(ShmId.Regions) / c.RegionSize);
        List<ulong> offsets = Fill(ctx, rig.A, slots);
        ctx.Expect(offsets.Count == slots,
            $"ALLOC was ERR after {offsets.Count} regions; the REGIONS window holds {slots} and the memory plugin's default capacity is the window ({rig.A.Errors()})");
        rig.A.ExpectErr(c.Alloc(1).Ack, "ALLOC of 1 byte with every slot taken");
        rig.A.Detach(offsets[slots / 2]);
        ulong again = rig.A.Alloc().Offset;
        ctx.Expect(again == offsets[slots / 2], $"the only free slot is at 0x{offsets[slots / 2]:x}, ALLOC answered 0x{again:x}");
    }

    private static void NoMemory(CheckContext ctx)
    {
        ulong regionSize = HostSpec.DefaultRegionSize;
        Rig rig = ctx.Compose(new HostSpec { Devices = 1, MemoryCapacity = 2 * regionSize });
        IsmClient c = rig.A.Client;
        int slots = (int)(c.Transport.ShmLength(ShmId.Regions) / c.RegionSize);
        ctx.Expect(slots > 2, $"the REGIONS window holds only {slots} regions; the check needs free slots beyond the memory");
        ulong first = rig.A.Alloc().Offset;
        ulong second = rig.A.Alloc().Offset;
        rig.A.ExpectErr(c.Alloc(regionSize).Ack, "ALLOC beyond the memory capacity of two regions");
        // The two regions are really backed: writing all of them must not fault (no SIGBUS later).
        byte[] fill = Patterns.Fill(0x5a, (int)regionSize);
        rig.A.Write(first, fill);
        rig.A.Write(second, fill);
        rig.A.Detach(first);
        rig.A.Alloc();
    }

    private static void Cleared(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        IsmClient c = rig.A.Client;
        int slots = (int)(c.Transport.ShmLength(ShmId.Regions) / c.RegionSize);
        int size = (int)c.RegionSize;
        List<ulong> offsets = Fill(ctx, rig.A, slots);
        ctx.Expect(offsets.Count > 0, $"no ALLOC succeeded ({rig.A.Errors()})");
        byte[] dirt = Patterns.Fill(0xa5, size);
        foreach (ulong o in offsets)
        {
            Patterns.ExpectZero(ctx, rig.A.Read(o, size), $"the new region at 0x{o:x}");
            rig.A.Write(o, dirt);
        }
        foreach (ulong o in offsets)
            rig.A.Detach(o);
        List<ulong> again = Fill(ctx, rig.A, slots);
        ctx.Expect(again.Count == offsets.Count, $"after detaching all {offsets.Count} regions only {again.Count} could be allocated again ({rig.A.Errors()})");
        foreach (ulong o in again)
            Patterns.ExpectZero(ctx, rig.A.Read(o, size), $"the region allocated at 0x{o:x} where a detached region was filled with 0xa5");
    }
}

/// <summary>Byte patterns the checks write and look for.</summary>
internal static class Patterns
{
    /// <summary>A recognisable 64-byte mark naming the writer and a sequence number.</summary>
    public static byte[] Mark(string writer, int n)
    {
        byte[] mark = new byte[64];
        System.Text.Encoding.ASCII.GetBytes($"vism conformance: written by {writer} #{n}").AsSpan().CopyTo(mark);
        return mark;
    }

    public static byte[] Fill(byte value, int length)
    {
        byte[] b = new byte[length];
        Array.Fill(b, value);
        return b;
    }

    public static void ExpectZero(CheckContext ctx, byte[] data, string what)
    {
        int at = data.AsSpan().IndexOfAnyExcept((byte)0);
        ctx.Expect(at < 0, $"{what} is not cleared: byte {at} is 0x{(at < 0 ? 0 : data[at]):x2}");
    }

    public static void ExpectSame(CheckContext ctx, byte[] expected, byte[] actual, string what) =>
        ctx.Expect(expected.AsSpan().SequenceEqual(actual), $"{what}: expected \"{Show(expected)}\", read \"{Show(actual)}\"");

    private static string Show(byte[] b) =>
        new(System.Text.Encoding.ASCII.GetString(b).TrimEnd('\0').Select(ch => ch is >= ' ' and <= '~' ? ch : '.').ToArray());
}
