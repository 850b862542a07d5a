using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Driver;

/// <summary>
/// The driver's "guest RAM": a memfd mapped into this process at a chosen guest-physical base,
/// shared with the device the way QEMU shares guest RAM with a vhost-user backend (the fd goes in
/// the memory table). A bump allocator hands out ring and buffer space.
/// </summary>
public sealed class GuestRam : IGuestMemory, IDisposable
{
    private readonly Mapping _map;
    private readonly Lock _lock = new();
    private ulong _next;

    /// <param name="size">Bytes of RAM (page multiple).</param>
    /// <param name="guestBase">Guest-physical address of the first byte.</param>
    public GuestRam(ulong size = 4 << 20, ulong guestBase = 0x4000_0000)
    {
        if (size == 0 || size % TransportRules.PageSize != 0) throw new ArgumentOutOfRangeException(nameof(size), $"a positive multiple of {TransportRules.PageSize}");
        Handle = MemFd.Create("vism-guest-ram", size);
        _map = Mapping.Map(Handle, 0, size);
        Size = size;
        GuestBase = guestBase;
    }

    private GuestRam(SafeFileHandle handle, ulong size, ulong guestBase)
    {
        Handle = handle;
        _map = Mapping.Map(Handle, 0, size);
        Size = size;
        GuestBase = guestBase;
    }

    /// <summary>Guest RAM over a descriptor the caller made (a file on tmpfs or hugetlbfs, a memfd
    /// created without sealing), as a VMM with <c>memory-backend-file</c> has; the RAM owns it.</summary>
    /// <param name="handle">The file, at least <paramref name="size"/> bytes long.</param>
    /// <param name="size">Bytes of RAM (page multiple).</param>
    /// <param name="guestBase">Guest-physical address of the first byte.</param>
    public static GuestRam Adopt(SafeFileHandle handle, ulong size, ulong guestBase = 0x4000_0000)
    {
        ArgumentNullException.ThrowIfNull(handle);
        if (size == 0 || size % TransportRules.PageSize != 0) throw new ArgumentOutOfRangeException(nameof(size), $"a positive multiple of {TransportRules.PageSize}");
        return new GuestRam(handle, size, guestBase);
    }

    /// <summary>A second, independent mapping of the same memfd at the same guest-physical base:
    /// the device's view of this RAM, as a vhost-user backend maps the fd from the memory table.</summary>
    public GuestRam CreateView() => new(Fd.Dup(Handle), Size, GuestBase);

    /// <summary>The memfd (shared with the device side).</summary>
    public SafeFileHandle Handle { get; }

    /// <summary>Bytes of RAM.</summary>
    public ulong Size { get; }

    /// <summary>Guest-physical address of the first byte.</summary>
    public ulong GuestBase { get; }

    /// <summary>Address of the first byte in this process (the "user address" of a vhost-user memory table).</summary>
    public nint HostAddress => _map.Address;

    /// <summary>Reserves <paramref name="length"/> bytes aligned to <paramref name="align"/>; returns the guest-physical address.</summary>
    public ulong Allocate(ulong length, ulong align = 16)
    {
        if (align == 0 || !ulong.IsPow2(align)) throw new ArgumentOutOfRangeException(nameof(align));
        lock (_lock)
        {
            ulong start = (_next + align - 1) & ~(align - 1);
            if (start > Size || length > Size - start)
                throw new InvalidOperationException($"guest RAM exhausted: {length} bytes wanted, {Size - Math.Min(Size, start)} left");
            _next = start + length;
            return GuestBase + start;
        }
    }

    /// <summary>A span over guest memory at <paramref name="gpa"/>.</summary>
    public unsafe Span<byte> Span(ulong gpa, int length)
    {
        if (!TryTranslate(gpa, (ulong)length, out nint host))
            throw new ArgumentOutOfRangeException(nameof(gpa), $"[{gpa:x}, +{length}) is outside guest RAM");
        return new Span<byte>((void*)host, length);
    }

    /// <inheritdoc />
    public bool TryTranslate(ulong address, ulong length, out nint host)
    {
        host = 0;
        if (address < GuestBase) return false;
        ulong off = address - GuestBase;
        if (off > Size || length > Size - off) return false;
        host = _map.Address + (nint)off;
        return true;
    }

    public void Dispose()
    {
        _map.Dispose();
        Handle.Dispose();
    }
}
