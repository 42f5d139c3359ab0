"""Real Chinese and English topic vocabulary for the synthetic short-video world.

The synthetic world generator composes video titles from these words so that a
pretrained (multilingual) text encoder can recognise a video's topic even when
token identity cannot: two titles of one topic may share no token at all,
because they draw different synonyms of the same concepts.

Format
------
``TOPIC_WORDS`` maps a topic name (a Chinese short-video category name) to::

    {"general": [concept, concept, concept],
     "sub": {subtopic name: [concept, concept], ...}}   # 4 subtopics

A concept is one string ``"zh1|zh2|zh3 / en1|en2|en3"``: synonyms (same, or
nearly the same, meaning) in Chinese, then synonyms in English, so that a
multilingual sentence encoder embeds all of them close together.

Constraints (enforced by :func:`check_vocabulary`)
--------------------------------------------------
* exactly 20 topics, in the fixed order of ``TOPIC_ORDER``;
* each topic: exactly 3 general concepts and exactly 4 subtopics, each
  subtopic with exactly 2 concepts (11 concepts per topic, 220 in total);
* each concept: 2 to 3 Chinese synonyms of 2-4 CJK characters, and 2 to 3
  English synonyms that are single lowercase ASCII words (letters only: no
  spaces, hyphens or digits);
* every word, Chinese or English, appears exactly once in the whole
  vocabulary (no word shared between concepts, subtopics or topics);
* none of ``RESERVED_WORDS`` appears (generic and comment-style words that
  are used elsewhere by the generator);
* subtopic names are Chinese labels of 2-6 CJK characters, unique across the
  file, and never equal to a concept word; they are labels, not title words.
"""

from __future__ import annotations

import re

TOPIC_ORDER: tuple[str, ...] = (
    "美食", "旅行", "宠物", "游戏", "音乐", "舞蹈", "健身", "科技", "时尚", "搞笑",
    "汽车", "教育", "体育", "动漫", "影视", "育儿", "家居", "摄影", "美妆", "三农",
)

#: (style name, its words separated by "|"); every style has the same number of words
STYLES = (
    ("humorous", "哈哈哈|笑死我了|太逗了|绝了|lol|haha|so funny|hilarious|[笑哭]|[捂脸]|[偷笑]|[呲牙]"),
    ("question", "请问|为什么|怎么做的|在哪里买|求教程|how|why|where is this|any tips|[疑问]|[惊讶]|[发呆]"),
    ("praise", "太棒了|厉害|好喜欢|支持|amazing|love it|great job|so good|[赞]|[鼓掌]|[比心]|[点赞]"),
    ("critique", "一般般|不太行|差评|没意思|boring|meh|overrated|not great|[白眼]|[撇嘴]|[打脸]|[吃瓜]"),
    ("emoji", "哇|wow|[玫瑰]|[爱心]|[送花]|[666]|[抱抱]|[火]|[干杯]|[加油]|[OK]|[调皮]"),
    ("sharing", "我也是|同款|想起了我|me too|same here|been there|my story|[大哭]|[可怜]|[机智]|[握手]|[奸笑]"),
)
#: words any title may use, whatever its topic
GENERIC_WORDS = "今天|分享|日常|第一次|终于|真的|一起|记录|大家|这个|vlog|my|new|today|best|part|with|life|day|video"
#: stickers a real-word title may end with (a sticker is a token no text encoder has seen)
TITLE_STICKERS = "[火]|[666]|[比心]|[赞]|[爱心]|[哇]|[酷]|[呆萌]|[星星眼]|[庆祝]"

#: generic and comment-style words (and each word of a style phrase): no topic concept may use one
RESERVED_WORDS: frozenset[str] = frozenset(
    part for phrase in [*GENERIC_WORDS.split("|"), *(w for _, words in STYLES for w in words.split("|"))]
    for part in [phrase, *phrase.split()]
)

# topic name (Chinese category name) -> {"general": [concept, ...], "sub": {subtopic name: [concept, ...]}}
# a concept is "zh1|zh2|zh3 / en1|en2|en3": synonyms (same meaning) in Chinese, then in English
TOPIC_WORDS: dict[str, dict] = {
    "美食": {
        "general": [
            "好吃|美味|香喷喷 / delicious|tasty|yummy",
            "菜肴|佳肴|菜品 / dish|cuisine|food",
            "吃货|美食家|老饕 / foodie|gourmet|epicure",
        ],
        "sub": {
            "烘焙": [
                "蛋糕|甜点|糕点 / cake|dessert|pastry",
                "面包|吐司|欧包 / bread|loaf|toast",
            ],
            "火锅": [
                "涮锅|打边炉|涮肉 / hotpot|shabu|steamboat",
                "麻辣|香辣|辛辣 / spicy|fiery|peppery",
            ],
            "街头小吃": [
                "小吃|小食|零嘴 / snack|nibbles|munchies",
                "路边摊|地摊|小摊 / stall|stand|kiosk",
            ],
            "家常菜": [
                "做饭|下厨|烧菜 / cooking|cookery|homecooking",
                "炒菜|小炒|爆炒 / stirfry|wok|saute",
            ],
        },
    },
    "旅行": {
        "general": [
            "旅游|旅途|出游 / travel|trip|journey",
            "风景|景色|风光 / scenery|landscape|view",
            "景点|名胜|打卡地 / attraction|landmark|sightseeing",
        ],
        "sub": {
            "海岛度假": [
                "海滩|沙滩|海边 / beach|seaside|shore",
                "度假|休假|假期 / vacation|holiday|getaway",
            ],
            "徒步登山": [
                "徒步|远足|暴走 / hiking|trekking|rambling",
                "登山|爬山|登顶 / mountaineering|climbing|summit",
            ],
            "古镇古城": [
                "古镇|古城|老城 / ancient|heritage|oldtown",
                "民宿|客栈|旅馆 / inn|hostel|guesthouse",
            ],
            "出国游": [
                "出国|海外|境外 / abroad|overseas|foreign",
                "背包客|驴友|背包族 / backpacker|wanderer|nomad",
            ],
        },
    },
    "宠物": {
        "general": [
            "萌宠|毛孩子|爱宠 / pet|critter|furbaby",
            "可爱|萌萌哒|呆萌 / cute|adorable|cuddly",
            "铲屎官|主人|宠主 / owner|keeper|guardian",
        ],
        "sub": {
            "养猫": [
                "猫咪|喵星人|小猫 / cat|kitty|kitten",
                "喵喵|猫叫|呼噜声 / meow|purr|mew",
            ],
            "养狗": [
                "狗狗|汪星人|小狗 / dog|puppy|doggo",
                "汪汪|狗叫|吠叫 / woof|bark|yap",
            ],
            "异宠": [
                "仓鼠|小仓鼠|金丝熊 / hamster|gerbil|rodent",
                "爬宠|蜥蜴|守宫 / reptile|lizard|gecko",
            ],
            "水族": [
                "鱼缸|水族箱|造景缸 / aquarium|fishtank|aquascape",
                "金鱼|锦鲤|观赏鱼 / goldfish|koi|guppy",
            ],
        },
    },
    "游戏": {
        "general": [
            "电玩|打游戏|玩游戏 / gaming|videogame",
            "玩家|游戏党|老玩家 / gamer|player",
            "攻略|秘籍|打法 / walkthrough|guide|strategy",
        ],
        "sub": {
            "电子竞技": [
                "电竞|赛事|联赛 / esports|tournament|league",
                "战队|队伍|团队 / team|squad|clan",
            ],
            "主机游戏": [
                "主机|游戏机|家用机 / console|playstation",
                "手柄|摇杆|控制器 / controller|joystick|gamepad",
            ],
            "单机大作": [
                "剧情|故事线|主线 / plot|storyline|narrative",
                "副本|地牢|关卡 / dungeon|raid|level",
            ],
            "手游": [
                "手机游戏|移动游戏|掌上游戏 / mobile|mobilegame",
                "抽卡|抽奖|扭蛋 / gacha|lootbox|summon",
            ],
        },
    },
    "音乐": {
        "general": [
            "歌曲|曲子|旋律 / song|tune|melody",
            "歌手|唱将|歌者 / singer|vocalist|crooner",
            "好听|动听|悦耳 / catchy|melodious|pleasant",
        ],
        "sub": {
            "吉他弹唱": [
                "吉他|木吉他|民谣吉他 / guitar|acoustic",
                "指弹|弹奏|拨弦 / fingerstyle|strumming|plucking",
            ],
            "翻唱歌曲": [
                "翻唱|改编|重新演绎 / cover|remake|rendition",
                "唱歌|演唱|歌唱 / singing|vocals",
            ],
            "说唱音乐": [
                "说唱|嘻哈|饶舌 / rap|hiphop|rhymes",
                "节拍|节奏|律动 / beat|rhythm|groove",
            ],
            "现场演出": [
                "演唱会|音乐会|音乐节 / concert|gig|festival",
                "舞台|现场|台上 / stage|live|onstage",
            ],
        },
    },
    "舞蹈": {
        "general": [
            "跳舞|起舞|舞动 / dance|dancing",
            "舞步|步伐|步法 / steps|footwork",
            "编舞|舞编|编排 / choreography|routine|choreo",
        ],
        "sub": {
            "街头舞蹈": [
                "街舞|霹雳舞|地板舞 / breakdance|breaking|bboy",
                "斗舞|尬舞|比舞 / battle|faceoff|showdown",
            ],
            "民族舞蹈": [
                "民族舞|民间舞|民舞 / folkdance|ethnic|folkloric",
                "古典舞|古风舞|国风舞 / classical|oriental|traditional",
            ],
            "芭蕾现代": [
                "芭蕾|芭蕾舞|足尖 / ballet|ballerina|pointe",
                "现代舞|当代舞 / contemporary|modern|lyrical",
            ],
            "广场舞蹈": [
                "广场舞|坝坝舞|大妈舞 / squaredance|linedance",
                "大妈|阿姨|大姐 / aunties|grannies|ladies",
            ],
        },
    },
    "健身": {
        "general": [
            "锻炼|运动|训练 / workout|exercise|training",
            "身材|体型|身形 / physique|body|shape",
            "自律|坚持|毅力 / discipline|persistence|grit",
        ],
        "sub": {
            "减脂": [
                "减肥|瘦身|掉秤 / weightloss|slimming|fatloss",
                "有氧|有氧运动|燃脂 / cardio|aerobic|fatburning",
            ],
            "增肌": [
                "撸铁|举铁|力量训练 / weightlifting|lifting|strength",
                "肌肉|肌肉感|壮硕 / muscle|muscular|brawny",
            ],
            "瑜伽拉伸": [
                "瑜伽|瑜珈|练瑜伽 / yoga|asana|yogi",
                "拉伸|伸展|柔韧 / stretching|flexibility|limber",
            ],
            "核心训练": [
                "腹肌|马甲线|核心 / abs|sixpack|core",
                "卷腹|仰卧起坐 / crunches|situps",
            ],
        },
    },
    "科技": {
        "general": [
            "黑科技|高科技|前沿科技 / technology|tech|innovation",
            "数码|数码产品|电子产品 / digital|electronics|devices",
            "测评|评测|实测 / review|evaluation|testing",
        ],
        "sub": {
            "智能手机": [
                "手机|智能机|新机 / smartphone|phone|cellphone",
                "开箱|拆箱|上手 / unboxing|unbox",
            ],
            "电脑装机": [
                "电脑|计算机|笔记本 / computer|laptop|pc",
                "装机|攒机|组装电脑 / build|rig|assembly",
            ],
            "人工智能": [
                "智能|智能化|智慧 / ai|smart|intelligent",
                "机器人|机械人|机器 / robot|bot|android",
            ],
            "编程开发": [
                "编程|写代码|敲代码 / coding|programming|code",
                "程序员|码农|开发者 / programmer|developer|coder",
            ],
        },
    },
    "时尚": {
        "general": [
            "潮流|时髦|新潮 / trendy|stylish|fashionable",
            "穿搭|搭配|造型 / outfit|ootd|styling",
            "衣服|服装|衣物 / clothes|clothing|apparel",
        ],
        "sub": {
            "街头潮牌": [
                "潮牌|街头风|潮人 / streetwear|hypebeast|urban",
                "球鞋|运动鞋|潮鞋 / sneakers|kicks|trainers",
            ],
            "国风汉服": [
                "汉服|华服|汉装 / hanfu|robe",
                "发簪|簪子|发钗 / hairpin|hairstick",
            ],
            "包包配饰": [
                "包包|手袋|挎包 / handbag|purse|bag",
                "首饰|饰品|配饰 / jewelry|accessories|bling",
            ],
            "通勤穿搭": [
                "西装|正装|套装 / suit|blazer|formalwear",
                "职业装|通勤装|上班装 / workwear|officewear",
            ],
        },
    },
    "搞笑": {
        "general": [
            "爆笑|好笑|逗乐 / comedy|humor|laughs",
            "段子|笑话|包袱 / joke|gag|punchline",
            "沙雕|逗比|搞怪 / silly|goofy|wacky",
        ],
        "sub": {
            "整蛊恶搞": [
                "整蛊|恶作剧|恶搞 / prank|trick|mischief",
                "反转|神反转|剧情反转 / twist|plottwist|unexpected",
            ],
            "相声小品": [
                "相声|说相声|对口相声 / crosstalk|duologue",
                "小品|短剧|情景剧 / skit|sketch|sitcom",
            ],
            "脱口秀场": [
                "脱口秀|单口喜剧|单口秀 / standup|comedian|monologue",
                "吐槽|调侃|嘲讽 / roast|mock|teasing",
            ],
            "网络热梗": [
                "表情包|梗图|斗图 / meme|sticker|emoji",
                "魔性|洗脑|上头 / addictive|hypnotic|earworm",
            ],
        },
    },
    "汽车": {
        "general": [
            "轿车|车子|爱车 / car|vehicle|automobile",
            "开车|驾驶|驾车 / driving|motoring",
            "试驾|试车|路试 / testdrive|roadtest",
        ],
        "sub": {
            "新能源车": [
                "电车|电动车|纯电 / ev|electric",
                "充电|快充|充电桩 / charging|charger|supercharger",
            ],
            "改装车": [
                "改装|魔改|改车 / tuning|modding|modified",
                "轮毂|轮圈|钢圈 / rims|wheels|alloys",
            ],
            "越野自驾": [
                "越野|越野车|四驱 / offroad|suv|jeep",
                "自驾|自驾游|自驾行 / roadtrip|overland",
            ],
            "性能跑车": [
                "跑车|超跑|超级跑车 / supercar|sportscar|hypercar",
                "引擎|发动机|马达 / engine|motor|powertrain",
            ],
        },
    },
    "教育": {
        "general": [
            "学习|读书|念书 / study|learning",
            "知识|干货|学问 / knowledge|knowhow|wisdom",
            "老师|教师|讲师 / teacher|tutor|instructor",
        ],
        "sub": {
            "考试备考": [
                "考试|测验|考场 / exam|examination|quiz",
                "刷题|做题|练习题 / drills|practice|worksheets",
            ],
            "学英语": [
                "英语|英文|外语 / english|esl",
                "单词|词汇|生词 / vocabulary|vocab|wordlist",
            ],
            "数学解题": [
                "数学|算术|奥数 / math|maths|arithmetic",
                "公式|算式|方程式 / formula|equation",
            ],
            "大学校园": [
                "大学|高校|校园 / university|college|campus",
                "毕业|毕业季|毕业典礼 / graduation|commencement|graduate",
            ],
        },
    },
    "体育": {
        "general": [
            "比赛|竞技|竞赛 / match|competition|contest",
            "运动员|选手|健将 / athlete|sportsman|competitor",
            "冠军|夺冠|称霸 / champion|winner|championship",
        ],
        "sub": {
            "足球赛事": [
                "足球|踢球|绿茵场 / football|soccer|footy",
                "进球|射门|破门 / goal|scoring|strike",
            ],
            "篮球赛场": [
                "篮球|打篮球|篮球场 / basketball|hoops|bball",
                "扣篮|灌篮|暴扣 / dunk|slam|slamdunk",
            ],
            "跑步马拉松": [
                "跑步|慢跑|晨跑 / running|jogging|run",
                "马拉松|长跑|半马 / marathon|halfmarathon",
            ],
            "球拍运动": [
                "羽毛球|羽球|打羽球 / badminton|shuttlecock|shuttle",
                "乒乓球|乒乓|国球 / pingpong|tabletennis",
            ],
        },
    },
    "动漫": {
        "general": [
            "动画|番剧|新番 / anime|animation|cartoon",
            "二次元|宅男|宅女 / otaku|weeb",
            "漫画|漫画书|条漫 / manga|comics|webtoon",
        ],
        "sub": {
            "漫展扮装": [
                "漫展|动漫展|漫画展 / convention|expo|comiccon",
                "角色扮演|扮装 / cosplay|costume|cosplayer",
            ],
            "手办模型": [
                "手办|模型|公仔 / figurine|figure|collectible",
                "盲盒|抽盒 / blindbox|mysterybox",
            ],
            "声优配音": [
                "声优|配音|配音员 / seiyuu|dubbing|voiceover",
                "主题曲|片头曲|插曲 / opening|themesong|ost",
            ],
            "国产动画": [
                "国漫|国产动漫|国创 / donghua|chinese",
                "仙侠|修仙|修真 / xianxia|cultivation|immortal",
            ],
        },
    },
    "影视": {
        "general": [
            "电影|影片|大片 / movie|film|cinema",
            "电视剧|剧集|连续剧 / drama|series|serial",
            "追剧|刷剧|煲剧 / binge|bingewatch",
        ],
        "sub": {
            "电影解说": [
                "解说|讲解|速看 / recap|commentary|breakdown",
                "影评|观后感|点评 / critique|criticism",
            ],
            "明星八卦": [
                "明星|艺人|爱豆 / celebrity|star|idol",
                "八卦|绯闻|吃瓜 / gossip|rumor|scandal",
            ],
            "古装宫斗": [
                "古装|古装剧|宫廷剧 / period|historical|dynasty",
                "宫斗|后宫|宫廷 / palace|intrigue|harem",
            ],
            "悬疑惊悚": [
                "悬疑|烧脑|推理 / mystery|suspense|whodunit",
                "恐怖|惊悚|恐怖片 / horror|thriller|scary",
            ],
        },
    },
    "育儿": {
        "general": [
            "宝宝|宝贝|小宝宝 / baby|infant",
            "带娃|育娃|养娃 / parenting|childrearing|upbringing",
            "孩子|小孩|儿童 / kids|children|child",
        ],
        "sub": {
            "孕期待产": [
                "怀孕|孕期|孕妇 / pregnancy|pregnant|expecting",
                "坐月子|月子|产后 / postpartum|confinement|postnatal",
            ],
            "宝爸宝妈": [
                "宝妈|妈妈|老妈 / mom|mommy|mother",
                "奶爸|爸爸|老爸 / dad|daddy|father",
            ],
            "早教启蒙": [
                "幼儿园|幼稚园|托班 / kindergarten|preschool|nursery",
                "绘本|童书|儿童书 / picturebook|storybook",
            ],
            "喂养辅食": [
                "辅食|宝宝餐|儿童餐 / babyfood|puree|weaning",
                "母乳|喂奶|哺乳 / breastfeeding|nursing|lactation",
            ],
        },
    },
    "家居": {
        "general": [
            "居家|家里|宅家 / home|household|domestic",
            "房子|住宅|屋子 / house|dwelling|residence",
            "温馨|舒适|惬意 / cozy|comfy|snug",
        ],
        "sub": {
            "装修改造": [
                "装修|翻新|装潢 / renovation|remodel|refurbish",
                "软装|布置|装饰 / decor|decoration|interior",
            ],
            "收纳整理": [
                "收纳|整理|归纳 / organizing|tidying|storage",
                "断舍离|极简|清理 / declutter|minimalism|purge",
            ],
            "清洁打扫": [
                "打扫|清洁|大扫除 / cleaning|cleanup|scrubbing",
                "家务|家事|做家务 / housework|chores|housekeeping",
            ],
            "家具家电": [
                "家具|家私|家俬 / furniture|furnishings",
                "家电|电器|小家电 / appliance|whitegoods",
            ],
        },
    },
    "摄影": {
        "general": [
            "拍照|照相|拍摄 / photography|photographing",
            "照片|相片|图片 / photo|photograph|picture",
            "相机|单反|微单 / camera|dslr|mirrorless",
        ],
        "sub": {
            "人像写真": [
                "人像|肖像|写真 / portrait|headshot|portraiture",
                "摆姿势|姿势|凹造型 / pose|posing|posture",
            ],
            "风光摄影": [
                "日落|晚霞|夕阳 / sunset|dusk|sundown",
                "星空|银河|夜空 / starry|milkyway|nightsky",
            ],
            "后期修图": [
                "修图|修片|精修 / retouch|editing|photoshop",
                "调色|滤镜|色调 / grading|filter|tone",
            ],
            "无人机航拍": [
                "航拍|空拍|俯拍 / aerial|birdseye|overhead",
                "无人机|飞行器|航拍机 / drone|quadcopter|uav",
            ],
        },
    },
    "美妆": {
        "general": [
            "化妆|彩妆|上妆 / makeup|cosmetics|glam",
            "颜值|美貌|漂亮 / gorgeous|pretty|beautiful",
            "护肤|保养|养肤 / skincare|complexion",
        ],
        "sub": {
            "口红唇妆": [
                "口红|唇膏|唇釉 / lipstick|lipgloss|lippie",
                "试色|色号 / swatch|shade",
            ],
            "底妆遮瑕": [
                "粉底|粉底液|气垫 / foundation|cushion|base",
                "遮瑕|遮瑕膏|遮盖 / concealer|coverage",
            ],
            "眼妆": [
                "眼影|眼影盘|大地色 / eyeshadow|palette|shimmer",
                "睫毛|假睫毛|睫毛膏 / lashes|eyelashes|mascara",
            ],
            "美发造型": [
                "发型|头发|秀发 / hairstyle|hair|hairdo",
                "染发|漂染|挑染 / haircolor|dye|highlights",
            ],
        },
    },
    "三农": {
        "general": [
            "农村|乡村|乡下 / rural|countryside|village",
            "农民|农夫|庄稼人 / farmer|peasant|grower",
            "种地|务农|干农活 / farming|agriculture|farmwork",
        ],
        "sub": {
            "种菜种田": [
                "菜园|菜地|自留地 / garden|allotment|patch",
                "水稻|稻田|插秧 / rice|paddy|ricefield",
            ],
            "畜禽养殖": [
                "养鸡|土鸡|散养鸡 / chicken|poultry|hen",
                "猪仔|小猪|生猪 / pig|hog|swine",
            ],
            "丰收采摘": [
                "丰收|收成|秋收 / harvest|crop|yield",
                "果园|果树|果林 / orchard|fruit|grove",
            ],
            "乡村集市": [
                "赶集|集市|大集 / market|fair|bazaar",
                "土特产|特产|农产品 / produce|specialty",
            ],
        },
    },
}

_ZH_WORD = re.compile(r"[\u4e00-\u9fff]{2,4}")
_EN_WORD = re.compile(r"[a-z]+")
_SUB_NAME = re.compile(r"[\u4e00-\u9fff]{2,6}")


def _split_concept(where: str, concept: object) -> tuple[list[str], list[str]]:
    if not isinstance(concept, str) or concept.count("/") != 1:
        raise ValueError(f"{where}: concept {concept!r} must be one string 'zh|zh / en|en'")
    zh_part, en_part = concept.split("/")
    zh = [w.strip() for w in zh_part.split("|")]
    en = [w.strip() for w in en_part.split("|")]
    return zh, en


def check_vocabulary(words: dict[str, dict] = TOPIC_WORDS) -> None:
    """Raise ValueError naming the offender if ``words`` breaks any rule."""
    if tuple(words) != TOPIC_ORDER:
        raise ValueError(f"topics must be exactly {list(TOPIC_ORDER)} in order, got {list(words)}")
    seen: dict[str, str] = {}  # word -> where it first appeared
    sub_names: dict[str, str] = {}  # subtopic name -> topic
    for topic, entry in words.items():
        if not isinstance(entry, dict) or set(entry) != {"general", "sub"}:
            raise ValueError(f"topic {topic}: entry must have exactly the keys 'general' and 'sub'")
        general, subs = entry["general"], entry["sub"]
        if not isinstance(general, list) or len(general) != 3:
            raise ValueError(f"topic {topic}: needs exactly 3 general concepts")
        if not isinstance(subs, dict) or len(subs) != 4:
            raise ValueError(f"topic {topic}: needs exactly 4 subtopics")
        groups: list[tuple[str, list]] = [(f"topic {topic} general", general)]
        for name, concepts in subs.items():
            if not isinstance(name, str) or not _SUB_NAME.fullmatch(name):
                raise ValueError(f"topic {topic}: subtopic name {name!r} must be 2-6 Chinese characters")
            if name in sub_names:
                raise ValueError(f"topic {topic}: subtopic name {name!r} already used in topic {sub_names[name]}")
            sub_names[name] = topic
            if not isinstance(concepts, list) or len(concepts) != 2:
                raise ValueError(f"topic {topic} subtopic {name}: needs exactly 2 concepts")
            groups.append((f"topic {topic} subtopic {name}", concepts))
        for where, concepts in groups:
            for concept in concepts:
                zh, en = _split_concept(where, concept)
                here = f"{where} concept {concept!r}"
                if not 2 <= len(zh) <= 3:
                    raise ValueError(f"{here}: needs 2-3 Chinese synonyms, has {len(zh)}")
                if not 2 <= len(en) <= 3:
                    raise ValueError(f"{here}: needs 2-3 English synonyms, has {len(en)}")
                for w in zh:
                    if not _ZH_WORD.fullmatch(w):
                        raise ValueError(f"{here}: Chinese word {w!r} must be 2-4 CJK characters")
                for w in en:
                    if not _EN_WORD.fullmatch(w):
                        raise ValueError(f"{here}: English word {w!r} must be lowercase ascii letters only")
                for w in zh + en:
                    if w in RESERVED_WORDS:
                        raise ValueError(f"{here}: word {w!r} is reserved")
                    if w in seen:
                        raise ValueError(f"{here}: word {w!r} already used in {seen[w]}")
                    seen[w] = here
    for name, topic in sub_names.items():
        if name in seen:
            raise ValueError(f"topic {topic}: subtopic name {name!r} equals a concept word ({seen[name]})")
