package pitwall;

/** The value with the latest event time (pitwall's "last"; of equal times, the later one). */
public class Last extends ByTime {
    @Override
    protected boolean wins(long time, long held) {
        return time >= held;
    }
}
