using System.Runtime.InteropServices;
using Vism.Abstractions;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>A loop run by the test: <see cref="FireNext"/> advances its clock to the one live timer
/// and runs it.</summary>
internal sealed class ManualLoop : IDeviceLoop
{
    private readonly List<Timer> _timers = [];

    /// <summary>The loop's clock.</summary>
    public TimeSpan Now { get; private set; }

    public void Advance(TimeSpan by) => Now += by;

    public bool IsOnLoop => true;
    public int Scheduled { get; private set; }
    public int LiveTimers => _timers.Count(t => !t.Cancelled);

    /// <summary>The delay of the one live timer.</summary>
    public TimeSpan PendingDelay => _timers.Single(t => !t.Cancelled).Delay;

    public void Post(Action work) => work();

    private readonly List<Func<bool>> _looks = [];

    /// <summary>Busy looks registered and not disposed.</summary>
    public int LookCount => _looks.Count;

    public IDisposable OnBusyLook(Func<bool> look)
    {
        _looks.Add(look);
        return new Registration(() => _looks.Remove(look));
    }

    /// <summary>Times a timer told the loop it found work (<see cref="IDeviceLoop.FoundWork"/>).</summary>
    public int WorkFound { get; private set; }

    public void FoundWork() => WorkFound++;

    /// <summary>One turn of busy polling: runs every look; true when one found work.</summary>
    public bool Look()
    {
        bool found = false;
        foreach (Func<bool> look in _looks.ToArray())
            found |= look();
        return found;
    }

    private sealed class Registration(Action dispose) : IDisposable
    {
        public void Dispose() => dispose();
    }

    public IDisposable WatchReadable(SafeHandle fd, Action onReadable) => throw new NotSupportedException();

    public IDisposable Schedule(TimeSpan due, Action callback)
    {
        Scheduled++;
        var t = new Timer(due, Now + due, callback);
        _timers.Add(t);
        return t;
    }

    /// <summary>Runs the one live timer and returns the time it fired at.</summary>
    public TimeSpan FireNext()
    {
        Timer t = _timers.Single(t => !t.Cancelled);
        _timers.Clear();
        Now = t.At;
        t.Callback();
        return t.At;
    }

    private sealed class Timer(TimeSpan delay, TimeSpan at, Action callback) : IDisposable
    {
        public TimeSpan Delay { get; } = delay;
        public TimeSpan At { get; } = at;
        public Action Callback { get; } = callback;
        public bool Cancelled { get; private set; }
        public void Dispose() => Cancelled = true;
    }
}
