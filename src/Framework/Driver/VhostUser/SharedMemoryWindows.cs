using System.Runtime.InteropServices;
using Vism.Abstractions;
using Vism.Native;
using Vism.VhostUser;

namespace Vism.Driver.VhostUser;

/// <summary>
/// The frontend's side of the VIRTIO shared memory regions, as QEMU keeps them: each shmid is an
/// address-space reservation (PROT_NONE) into which SHMEM_MAP places an fd with MAP_FIXED, and from
/// which SHMEM_UNMAP removes it again. Mappings never overlap, an unmap must name a whole mapping,
/// and a device reset drops them all. Thread-safe.
/// </summary>
internal sealed class SharedMemoryWindows : IDisposable
{
    private const ulong PageSize = TransportRules.PageSize;
    private readonly Lock _lock = new();
    private readonly Dictionary<byte, Window> _windows = [];

    /// <summary>Reserves one window per non-zero size (index = shmid).</summary>
    public SharedMemoryWindows(ReadOnlySpan<ulong> sizes)
    {
        try
        {
            for (int i = 0; i < sizes.Length; i++)
                if (sizes[i] != 0) _windows[(byte)i] = new Window(Mapping.Reserve(sizes[i]));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public ulong Length(byte shmId) => _windows.TryGetValue(shmId, out Window? w) ? w.Reservation.Length : 0;

    public nint Address(byte shmId) => _windows.TryGetValue(shmId, out Window? w) ? w.Reservation.Address : 0;

    /// <summary>Whether [offset, offset+length) of the window is inside one live mapping.</summary>
    public bool IsMapped(byte shmId, ulong offset, ulong length)
    {
        lock (_lock)
        {
            if (!_windows.TryGetValue(shmId, out Window? w)) return false;
            foreach ((ulong at, (ulong len, _)) in w.Mappings)
                if (offset >= at && offset - at < len && length <= len - (offset - at)) return true;
            return false;
        }
    }

    /// <summary>Stores one byte at <paramref name="offset"/> if a mapping covers it (under the lock,
    /// so a concurrent SHMEM_UNMAP cannot pull the page away mid-store).</summary>
    public unsafe bool TryWriteByte(byte shmId, ulong offset, byte value)
    {
        lock (_lock)
        {
            if (!IsMapped(shmId, offset, 1)) return false;
            Volatile.Write(ref *(byte*)(_windows[shmId].Reservation.Address + (nint)offset), value);
            return true;
        }
    }

    /// <summary>Adds 1 (wrapping) to the byte at <paramref name="offset"/> of window <paramref name="shmId"/>:
    /// a store whose value always differs from the one there, so a device that polls the window
    /// against its last snapshot cannot miss it.</summary>
    /// <returns>False when that byte is not mapped.</returns>
    public unsafe bool TryIncrementByte(byte shmId, ulong offset)
    {
        lock (_lock)
        {
            if (!IsMapped(shmId, offset, 1)) return false;
            byte* b = (byte*)(_windows[shmId].Reservation.Address + (nint)offset);
            Volatile.Write(ref *b, unchecked((byte)(Volatile.Read(ref *b) + 1)));
            return true;
        }
    }

    /// <summary>SHMEM_MAP.</summary>
    /// <returns>Null, or why it was refused.</returns>
    public string? Map(in ShmemMapPayload m, SafeHandle? fd)
    {
        if (fd is null) return "SHMEM_MAP without an fd";
        lock (_lock)
        {
            if (!_windows.TryGetValue(m.ShmId, out Window? w)) return $"no shared memory region {m.ShmId}";
            if (CheckRange(w, m) is { } bad) return bad;
            foreach ((ulong at, (ulong len, _)) in w.Mappings)
                if (m.ShmOffset < at + len && at < m.ShmOffset + m.Length)
                    return $"[0x{m.ShmOffset:x}, +0x{m.Length:x}) overlaps the mapping at 0x{at:x}";
            if (m.FdOffset % PageSize != 0) return $"fd offset 0x{m.FdOffset:x} is not page aligned";
            try
            {
                w.Reservation.MapFixed(m.ShmOffset, fd, m.FdOffset, m.Length, m.Writable);
            }
            catch (PosixException ex)
            {
                return ex.Message;
            }
            w.Mappings[m.ShmOffset] = (m.Length, m.Writable);
            return null;
        }
    }

    /// <summary>SHMEM_UNMAP.</summary>
    /// <returns>Null, or why it was refused.</returns>
    public string? Unmap(in ShmemMapPayload m)
    {
        lock (_lock)
        {
            if (!_windows.TryGetValue(m.ShmId, out Window? w)) return $"no shared memory region {m.ShmId}";
            if (!w.Mappings.TryGetValue(m.ShmOffset, out (ulong Length, bool) existing) || existing.Length != m.Length)
                return $"no mapping at 0x{m.ShmOffset:x} of length 0x{m.Length:x}";
            w.Reservation.UnmapFixed(m.ShmOffset, m.Length);
            w.Mappings.Remove(m.ShmOffset);
            return null;
        }
    }

    /// <summary>Drops every mapping (what QEMU does on a device reset).</summary>
    public void DropAll()
    {
        lock (_lock)
        {
            foreach (Window w in _windows.Values)
            {
                foreach ((ulong at, (ulong len, _)) in w.Mappings) w.Reservation.UnmapFixed(at, len);
                w.Mappings.Clear();
            }
        }
    }

    /// <summary>Number of live mappings in <paramref name="shmId"/>.</summary>
    public int Count(byte shmId)
    {
        lock (_lock) return _windows.TryGetValue(shmId, out Window? w) ? w.Mappings.Count : 0;
    }

    private static string? CheckRange(Window w, in ShmemMapPayload m)
    {
        ulong size = w.Reservation.Length;
        if (m.Length == 0 || m.ShmOffset % PageSize != 0 || m.Length % PageSize != 0)
            return $"[0x{m.ShmOffset:x}, +0x{m.Length:x}) is empty or not page aligned";
        if (m.ShmOffset > size || m.Length > size - m.ShmOffset)
            return $"[0x{m.ShmOffset:x}, +0x{m.Length:x}) is outside the 0x{size:x}-byte region {m.ShmId}";
        return null;
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (Window w in _windows.Values) w.Reservation.Dispose();
            _windows.Clear();
        }
    }

    private sealed class Window(Mapping reservation)
    {
        public Mapping Reservation { get; } = reservation;
        public Dictionary<ulong, (ulong Length, bool Writable)> Mappings { get; } = [];
    }
}
